"""The style templates as a gallery of cards; choosing one fills the prompt and the settings it defines."""

import html

import streamlit as st

ALL = "All styles"
MODE_NOUNS = {"place": "placing a product", "restyle": "restyling a photo", "generate": "a scene without a photo"}


def choose(template: dict) -> None:
    """Button callback: runs before the widgets are drawn, so it may set their values."""
    st.session_state.update(
        template_id=template["id"], prompt=template["prompt"], negative=template.get("negative_prompt") or "",
        steps=int(template.get("steps") or 30), guidance=float(template.get("guidance_scale") or 7.5),
        strength=float(template.get("strength") if template.get("strength") is not None else 0.5))


def clear() -> None:
    st.session_state["template_id"] = None


def gallery(templates: list[dict], mode: str) -> None:
    if not templates:
        st.info("The generator has no style templates to offer; write your own prompt below.")
        return
    templates = _for_mode(templates, mode)
    categories = sorted({t.get("category") or "Other" for t in templates})
    st.session_state.setdefault("style_category", ALL)
    if st.session_state["style_category"] not in (ALL, *categories):
        st.session_state["style_category"] = ALL  # a category with no style for this mode
    picked = st.pills("Category", [ALL, *categories], key="style_category", format_func=lambda c: c.capitalize(),
                      label_visibility="collapsed")
    shown = [t for t in templates if picked in (None, ALL) or (t.get("category") or "Other") == picked]
    chosen = st.session_state.get("template_id")
    with st.container(height=380, border=False, key="style-gallery"):
        for row in range(0, len(shown), 2):
            for column, template in zip(st.columns(2), shown[row:row + 2]):
                with column:
                    _card(template, template["id"] == chosen)


def _for_mode(templates: list[dict], mode: str) -> list[dict]:
    """The styles made for this mode (a template that names no modes suits all); the rest on request, after them."""
    suited = [t for t in templates if mode in (t.get("modes") or (mode,))]
    others = [t for t in templates if t not in suited]
    if not others:
        return templates
    noun = "style is" if len(others) == 1 else "styles are"
    if st.toggle(f"Show all styles ({len(others)} more {noun} not made for {MODE_NOUNS.get(mode, mode)})",
                 key="all_styles"):
        return suited + others
    return suited


def _card(template: dict, selected: bool) -> None:
    with st.container(border=True, key=f"style-card-{template['id']}"):
        st.markdown(f'<div class="sr-card-head"><b>{html.escape(template["name"])}</b>'
                    f'<span class="sr-tag">{html.escape(template.get("category") or "Other")}</span></div>'
                    f'<div class="sr-prompt sr-clamp">{html.escape(template.get("prompt") or "")}</div>',
                    unsafe_allow_html=True)
        if selected:
            st.button("✓ Selected", key=f"tpl-{template['id']}", type="primary", width="stretch",
                      on_click=clear, help="Click again to write your own prompt")
        else:
            st.button("Use this style", key=f"tpl-{template['id']}", width="stretch", on_click=choose,
                      args=(template,))

