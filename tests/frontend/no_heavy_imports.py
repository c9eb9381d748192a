"""Run the app once under AppTest with torch, diffusers and the backend's server stack made unimportable.

Used by test_no_torch.py in a fresh interpreter: `python no_heavy_imports.py [job_id]`. Prints one JSON line.
"""

import importlib.abc
import json
import sys
from pathlib import Path

BLOCKED = ("torch", "diffusers", "transformers", "fastapi", "pydantic_settings", "uvicorn", "peft")


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the frontend must not need it)")
        return None


sys.meta_path.insert(0, Refuse())

from streamlit.testing.v1 import AppTest  # noqa: E402

app = Path(__file__).resolve().parents[2] / "frontend" / "streamlit_app.py"
at = AppTest.from_file(app, default_timeout=60)
if len(sys.argv) > 1:
    at.query_params["job"] = sys.argv[1]
at.run()
print(json.dumps({
    "exceptions": [e.value for e in at.exception],
    "images": sum(len(i.value) for i in at.image),
    "buttons": [b.key for b in at.button],
    "heavy": sorted({m.split(".")[0] for m in sys.modules} & set(BLOCKED)),
    "backend_modules": sorted(m for m in sys.modules if m == "backend" or m.startswith("backend.")),
}))
