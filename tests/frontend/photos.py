"""Photos of a product as a shop has them: the factories' packshot on white, a little shifted each time."""

import io

from PIL import Image

from tests.factories import packshot


def product_photos(n: int, size: int = 64) -> list[tuple[str, bytes, str]]:
    """n views of the product on white (what the tiny "not white" segmenter cuts out), as uploads."""
    photos = []
    for i in range(n):
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        with Image.open(io.BytesIO(packshot())) as shot:
            canvas.paste(shot, (4 + 3 * i % 16, 2 + i % 6), shot)
        out = io.BytesIO()
        canvas.save(out, format="PNG")
        photos.append((f"view-{i + 1}.png", out.getvalue(), "image/png"))
    return photos
