"""What a job costs the generator, counted as the backend counts it, so the page can say so before it is sent.

The unit is one standard picture: 512 x 512 at 30 steps (backend/models.py, `ResolvedSpec.image_cost`). A
bigger or longer picture counts more, a smaller one never less than 1. The generator refuses a job that
costs more than its MAX_JOB_COST (32 unless whoever runs it set another), and the queue takes a bounded
amount of work; neither number is published, so the page warns with the default and shows the backend's
own refusal when it comes.
"""

STANDARD_PIXELS, STANDARD_STEPS = 512 * 512, 30
DEFAULT_MAX_JOB_COST = 32.0


def image_cost(width: int, height: int, steps: int) -> float:
    """One picture's work in standard pictures (at least 1); tests check it against the backend's."""
    return max(1.0, width * height / STANDARD_PIXELS * steps / STANDARD_STEPS)


def job_cost(width: int, height: int, steps: int, num_images: int) -> float:
    return round(image_cost(width, height, steps) * num_images, 2)


def amount(cost: float) -> str:
    """A cost in words: "24 standard pictures", "1 standard picture", "26.7 standard pictures"."""
    value = f"{cost:.1f}".removesuffix(".0")
    return f"{value} standard picture{'' if value == '1' else 's'}"
