"""What a job costs the generator, counted as the backend counts it, so the page can say so before it is sent.

The unit is one standard picture: 512 x 512 at 30 steps (backend/contract.py, shared with the backend). A
bigger or longer picture counts more, a smaller one never less than 1. The generator refuses a job that
costs more than its MAX_JOB_COST (128 unless whoever runs it set another), and the queue takes a bounded
amount of work; neither number is published, so the page warns with the default and shows the backend's
own refusal when it comes.
"""

from backend.contract import STANDARD_STEPS, image_cost, job_cost  # noqa: F401 (the backend's own formula)

DEFAULT_MAX_JOB_COST = 128.0  # 16 SDXL pictures at 1024 x 1024 and 60 steps


def amount(cost: float) -> str:
    """A cost in words: "24 standard pictures", "1 standard picture", "26.7 standard pictures"."""
    value = f"{cost:.1f}".removesuffix(".0")
    return f"{value} standard picture{'' if value == '1' else 's'}"
