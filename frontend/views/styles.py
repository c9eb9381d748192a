"""The style templates as a gallery of cards; choosing one fills the prompt and the settings it defines."""

import html

import streamlit as st

ALL = "All styles"


def choose(template: dict) -> None:
    """Button callback: runs before the widgets are drawn, so it may set their values."""
    st.session_state.update(
        template_id=template["id"], prompt=template["prompt"], negative=template.get("negative_prompt") or "",
        steps=int(template.get("steps") or 30), guidance=float(template.get("guidance_scale") or 7.5),
        strength=float(template.get("strength") if template.get("strength") is not None else 0.5))


def clear() -> None:
    st.session_state["template_id"] = None


def gallery(templates: list[dict]) -> None:
    if not templates:
        st.info("The generator has no style templates to offer; write your own prompt below.")
        return
    categories = sorted({t.get("category") or "Other" for t in templates})
    st.session_state.setdefault("style_category", ALL)
    picked = st.pills("Category", [ALL, *categories], key="style_category", format_func=lambda c: c.capitalize(),
                      label_visibility="collapsed")
    shown = [t for t in templates if picked in (None, ALL) or (t.get("category") or "Other") == picked]
    chosen = st.session_state.get("template_id")
    with st.container(height=380, border=False, key="style-gallery"):
        for row in range(0, len(shown), 2):
            for column, template in zip(st.columns(2), shown[row:row + 2]):
                with column:
                    _card(template, template["id"] == chosen)


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

