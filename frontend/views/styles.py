"""The style templates as a gallery of cards; choosing one fills the prompt and the settings it defines.

The gallery flows in the page (no scroll box of its own): a few cards, then "Show all". Choosing a style
over words or settings the user put in the form keeps them, and the chosen card offers to put them back.
"""

import html
from pathlib import Path

import streamlit as st

from frontend.views.style_notes import describe

ALL = "All styles"
FIRST = 4             # cards shown before "Show all": two rows, so the prompt box stays near
OPEN = "styles_open"  # the category whose every style is shown
UNDO = "style_undo"   # what the last choice replaced: {"name", "values", "prompt"}
APPLIED = "style_values"  # what the last choice put in the form, to tell it from the user's own edits
FIELDS = ("prompt", "negative", "steps", "guidance", "strength", "reflection")
BLANK = {"prompt": "", "negative": "", "steps": 30, "guidance": 7.5, "strength": 0.5, "reflection": 0.0}  # compose's
SAMPLES = Path(__file__).resolve().parents[2] / "backend" / "products" / "samples"  # template_samples.py makes them
MODE_NOUNS = {"place": "placing a product", "restyle": "restyling a photo", "generate": "a scene without a photo"}


def values_of(template: dict) -> dict:
    return {"prompt": template["prompt"], "negative": template.get("negative_prompt") or "",
            "steps": int(template.get("steps") or 30), "guidance": float(template.get("guidance_scale") or 7.5),
            "strength": float(template.get("strength") if template.get("strength") is not None else 0.5),
            "reflection": min(0.8, float(template.get("reflection") or 0.0))}  # the Floor reflection slider's range


def choose(template: dict) -> None:
    """Button callback: runs before the widgets are drawn, so it may set their values."""
    ss = st.session_state
    before = {key: ss.get(key) for key in ("template_id", *FIELDS)}
    values = values_of(template)
    if _own(before):
        ss[UNDO] = {"name": template["name"], "values": before, "prompt": values["prompt"]}
    else:
        ss.pop(UNDO, None)
    ss.update(template_id=template["id"], **values)
    ss[APPLIED] = values


def _own(before: dict) -> bool:
    """Whether the form holds something of the user's (typed, or reused from a picture) that a style would lose."""
    current = {key: before.get(key) for key in FIELDS}
    current["prompt"] = current["prompt"] or ""
    current["negative"] = current["negative"] or ""
    return current != BLANK and current != st.session_state.get(APPLIED)


def undo() -> None:
    kept = st.session_state.pop(UNDO, None)
    if kept:
        st.session_state.update(kept["values"])
        st.session_state.pop(APPLIED, None)  # the form holds the user's own values again


def keep() -> None:
    st.session_state.pop(UNDO, None)


def clear() -> None:
    st.session_state["template_id"] = None
    st.session_state.pop(UNDO, None)


def gallery(templates: list[dict], mode: str) -> None:
    if not templates:
        st.info("The generator has no style templates to offer; write your own prompt below.")
        return
    _forget_stale_undo()
    templates = _for_mode(templates, mode)
    categories = sorted({t.get("category") or "Other" for t in templates})
    st.session_state.setdefault("style_category", ALL)
    if st.session_state["style_category"] not in (ALL, *categories):
        st.session_state["style_category"] = ALL  # a category with no style for this mode
    picked = st.pills("Category", [ALL, *categories], key="style_category", format_func=_category_name,
                      required=True,  # a second click on the chosen chip left none lit, all styles shown
                      label_visibility="collapsed")  # the chips wrap onto a second line (chrome.CSS)
    picked = picked or ALL
    shown = [t for t in templates if picked == ALL or (t.get("category") or "Other") == picked]
    chosen = st.session_state.get("template_id")
    everything = st.session_state.get(OPEN) == picked or len(shown) <= FIRST + 1
    visible = shown if everything else shown[:FIRST] + [t for t in shown[FIRST:] if t["id"] == chosen]
    with st.container(key="style-gallery"):
        for row in range(0, len(visible), 2):
            for column, template in zip(st.columns(2), visible[row:row + 2]):
                with column:
                    _card(template, template["id"] == chosen, mode)
    if not everything:
        st.button(f"Show {len(shown) - FIRST} more styles", key="styles-more", icon=":material/expand_more:",
                  on_click=_open, args=(picked,))
    elif len(shown) > FIRST + 1:
        st.button("Show fewer styles", key="styles-more", icon=":material/expand_less:", on_click=_open, args=(None,))


def _category_name(category: str) -> str:
    return category if category == ALL else category.replace("-", " & ").capitalize()


def _open(category: str | None) -> None:
    st.session_state[OPEN] = category


def _toggled() -> None:
    """The styles asked for come after the others: the gallery opens, or they would stay out of sight."""
    if st.session_state.get("all_styles"):
        _open(st.session_state.get("style_category") or ALL)


def _forget_stale_undo() -> None:
    """The prompt was edited after the style was chosen: putting the old one back would lose those words."""
    kept = st.session_state.get(UNDO)
    if kept and st.session_state.get("prompt") != kept["prompt"]:
        st.session_state.pop(UNDO)


def _for_mode(templates: list[dict], mode: str) -> list[dict]:
    """The styles made for this mode (a template that names no modes suits all); the rest on request, after them."""
    suited = [t for t in templates if mode in (t.get("modes") or (mode,))]
    others = [t for t in templates if t not in suited]
    if not others:
        return templates
    noun = "style is" if len(others) == 1 else "styles are"
    if st.toggle(f"Show all styles ({len(others)} more {noun} not made for {MODE_NOUNS.get(mode, mode)})",
                 key="all_styles", on_change=_toggled):
        return suited + others
    return suited


def sample(template_id: str, folder: Path | None = None) -> Path | None:
    """The style's sample picture, where one was made (python -m backend.tools.template_samples)."""
    path = (folder or SAMPLES) / f"{template_id}.jpg"
    return path if path.is_file() else None


def _card(template: dict, selected: bool, mode: str) -> None:
    with st.container(border=True, key=f"style-card-{template['id']}"):
        picture = sample(template["id"])
        if picture:
            st.image(str(picture), width="stretch")
        st.markdown(f'<div class="sr-card-head"><b>{html.escape(template["name"])}</b>'
                    f'<span class="sr-tag">{html.escape(_category_name(template.get("category") or "Other"))}'
                    f'</span></div><div class="sr-desc sr-clamp">{html.escape(describe(template, mode))}</div>',
                    unsafe_allow_html=True)
        if not selected:
            st.button("Use this style", key=f"tpl-{template['id']}", width="stretch", on_click=choose,
                      args=(template,))
            return
        st.button("✓ Selected", key=f"tpl-{template['id']}", type="primary", width="stretch",
                  on_click=clear, help="Click again to write your own prompt")
        if st.session_state.get(UNDO):
            _undo_offer()


def _undo_offer() -> None:
    """Right where the user clicked: what the style replaced, and a way back."""
    st.markdown('<div class="sr-meta">It replaced the prompt and settings you had.</div>', unsafe_allow_html=True)
    with st.container(horizontal=True, gap="small", key="style-undo"):
        st.button("Undo", key="style-undo-yes", icon=":material/undo:", on_click=undo,
                  help="Put your prompt and settings back")
        st.button("Keep", key="style-undo-no", on_click=keep)
