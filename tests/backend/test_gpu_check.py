"""`make gpu-check` runs its whole course on the CPU with toy architectures: every section, no error."""

import json

from backend.tools import gpu_check


def test_gpu_check_runs_every_section_with_tiny_architectures(tmp_path, capsys):
    assert gpu_check.main(["--tiny", "--out", str(tmp_path), "--budget-s", "900"]) == 0
    [written] = tmp_path.glob("gpu-check-*-cpu.json")
    out = json.loads(written.read_text())
    assert out["errors"] == {} and out["skipped"] == []
    assert out["sd15"]["unet"] and out["sd15"]["pipeline"] and out["sd15"]["system_4img"]["last_s"] > 0
    assert [r["batch"] for r in out["sd15_memory"]] == [1, 2]
    assert out["place"]["place_s"] > 0 and out["sdxl"][0]["images_per_s"] > 0
    assert out["sdxl_system_4img"]["last_s"] > 0
    assert out["guard_oom"]["made"] == 8 and out["guard_nan_decode"]["recovered"]
    for name in ("sd15_training", "sdxl_training"):  # UNet only, then with the text encoder(s)
        assert [r["text_encoders"] for r in out[name]] == [False, True], out[name]
        assert all(r["steps_per_s"] > 0 and all(x == x for x in r["loss"]) for r in out[name]), out[name]
    printed = capsys.readouterr().out
    assert "guard: out-of-memory batch made one at a time" in printed and "SDXL training steps/s" in printed


def test_a_broken_section_is_recorded_and_the_exit_code_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "save_sdxl", lambda *a: (_ for _ in ()).throw(RuntimeError("no SDXL today")))
    monkeypatch.setattr(gpu_check.bench, "gpu_part", lambda *a: {"errors": {}})
    assert gpu_check.main(["--tiny", "--out", str(tmp_path)]) == 1
    out = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert out["errors"] == {"sdxl build": "RuntimeError: no SDXL today"}
