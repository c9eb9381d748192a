"""What each style looks like, in a shop owner's words: the cards show this, not the prompt it writes
(the prompt, camera jargon and all, lands in the prompt box once a style is chosen).

Templates ship with the backend and a newer one may come without a note here: `describe` then makes one
from the first words of its prompt, leaving out the camera settings and the `<product>` token.
"""

import re

NOTES = {
    "studio-white": "The classic shop photo: a clean white background and soft, even light.",
    "flat-lay-flowers": "Seen from above on linen, with peonies and leaves around it.",
    "beach-sunset": "On wet sand at the water's edge, in warm sunset light.",
    "marble-countertop": "On a white marble counter by a window, a bright kitchen behind.",
    "outdoor-lifestyle": "On a park bench in morning sun, green trees softly blurred behind.",
    "christmas-gifting": "Among wrapped presents, pine branches and warm fairy lights.",
    "dark-moody-spotlight": "On a black stand under a single spotlight: dramatic and luxurious.",
    "cosmetics-water-splash": "Standing in clear water with a fresh splash: bright and clean.",
    "cosmetics-pastel-podium": "On a pastel pink podium with soft shapes and gentle light.",
    "shoes-urban-street": "On city pavement, a graffiti wall behind, low and close up.",
    "shoes-floating-levitation": "Floating in mid-air against a bold orange background.",
    "eyewear-reflective-surface": "On a black mirror with a clean reflection, light grey behind.",
    "eyewear-summer-poolside": "On the edge of a turquoise pool in bright summer sun.",
    "bags-boutique-shelf": "On a wooden shelf in an upmarket shop, warm spotlights.",
    "bags-cafe-table": "On a café table beside a coffee, a Paris street behind.",
    "watches-dark-luxury": "Close up on dark stone, light catching the metal and glass.",
    "watches-wrist-outdoor": "Worn on a wrist, hand on a steering wheel, late sun.",
    "jewellery-velvet": "Close up on green velvet, every stone sparkling.",
    "jewellery-model-portrait": "Worn by a model, framed on the neck and collarbone.",
    "food-rustic-table": "On a rustic wooden table with fresh herbs and a napkin.",
    "drink-ice-condensation": "Ice-cold with droplets, ice cubes and citrus around it.",
    "electronics-desk-setup": "On a tidy wooden desk in a bright home office.",
    "electronics-neon-tech": "On a dark glossy surface lit by cyan and pink neon.",
    "furniture-scandi-living": "In a bright Scandinavian living room with light wood and plants.",
    "furniture-loft-evening": "In a brick-walled loft at dusk, lamps glowing warm.",
    "pets-cozy-home": "On a knitted blanket at home, a golden retriever beside it.",
    "pets-garden-play": "On a sunny lawn in the garden, a cat playing nearby.",
    "clothing-ghost-mannequin": "The garment alone, shaped as if worn, on light grey.",
    "clothing-street-style": "Worn by a model walking down a city street at golden hour.",
    "stone-podium-botanical": "On a stone podium among palm leaves, in warm morning sun.",
    "kitchen-counter-morning": "On a light wooden kitchen counter in bright morning sun.",
    "spa-bathroom-shelf": "On a marble bathroom shelf with towels and a candle: calm spa mood.",
    "art-oil-painting": "Turned into an oil painting with thick brush strokes.",
    "art-watercolour": "Turned into a soft watercolour painting on paper.",
    "art-pencil-sketch": "Turned into a detailed pencil drawing.",
    "art-pop-art": "Turned into a bold pop art print with bright flat colours.",
    "art-ukiyo-e": "Turned into a Japanese woodblock print.",
    "art-nouveau-poster": "Turned into an art nouveau poster with a floral border.",
    "art-low-poly": "Turned into a simple 3D scene made of flat facets.",
    "art-pixel-art": "Turned into retro video game pixel art.",
}

# Clauses that are camera settings or quality words rather than a description of the scene.
JARGON = re.compile(r"\b(\d+mm|f/\d|lens|bokeh|depth of field|photorealistic|high detail|ultra|sharp|"
                    r"detail|8k|4k|lighting|photo(graphy)?|shot)\b", re.IGNORECASE)
LONGEST = 90


def describe(template: dict, mode: str | None = None) -> str:
    """A plain sentence for a style's card; an art style says what it turns: in restyle mode, the owner's photo."""
    if note := NOTES.get(template.get("id")):
        if mode == "restyle" and note.startswith("Turned into"):
            return "Your photo turned into" + note.removeprefix("Turned into")
        return note
    clauses = [c.strip() for c in (template.get("prompt") or "").split(",")]
    kept = [c for c in clauses if c and not JARGON.search(c)][:2]
    text = ", ".join(kept).replace("<product>", "your product").strip()
    text = re.sub(r"\s+", " ", re.sub(r"[<>]", "", text))
    if text.lower() in ("", "your product"):
        return f"A {template.get('category') or 'general'} style."
    if len(text) > LONGEST:
        text = text[:LONGEST - 1].rsplit(" ", 1)[0] + "…"
    return text[0].upper() + text[1:] + ("" if text.endswith(("…", ".")) else ".")
