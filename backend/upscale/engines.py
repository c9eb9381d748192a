"""The 4x upscaling engines: Replicate's hosted mv-lab/swin2sr (backend.upscale.replicate_engine), or Swin2SR
from transformers here (backend.upscale.local_engine); what they share is in backend.upscale.common.

Both take PNG bytes and give back PNG bytes exactly 4x the source in each side. Neither imports torch at
module load, so the API process that imports this module stays light. backend.upscale.service decides where
an engine runs and where its result is stored.
"""

from backend.config import LOCAL_UPSCALER_MODEL as LOCAL_MODEL_ID
from backend.config import REPLICATE_MODEL
from backend.upscale.common import Upscaler
from backend.upscale.local_engine import LocalUpscaler
from backend.upscale.replicate_engine import REPLICATE_VERSION, ReplicateUpscaler


def make_upscaler(kind: str, *, replicate_api_token: str | None = None, replicate_base_url: str | None = None,
                  replicate_model: str = REPLICATE_MODEL, replicate_version: str = REPLICATE_VERSION,
                  replicate_task: str = "real_sr", local_model_id: str = LOCAL_MODEL_ID,
                  device: str = "auto", gpu: int = 0) -> Upscaler | None:
    """The engine UPSCALER names: `replicate`, `local`, or None for `off`."""
    if kind == "off":
        return None
    if kind == "replicate":
        if replicate_model != REPLICATE_MODEL and replicate_version == REPLICATE_VERSION:
            raise ValueError(f"the Replicate model is {replicate_model!r}: set the Replicate version to one of its "
                             f"version ids (the pinned default belongs to {REPLICATE_MODEL})")
        return ReplicateUpscaler(replicate_api_token or "", base_url=replicate_base_url, model=replicate_model,
                                 version=replicate_version, task=replicate_task)
    if kind == "local":
        return LocalUpscaler(local_model_id, device=device, gpu=gpu)
    raise ValueError(f"UPSCALER must be replicate, local or off, got {kind!r}")
