"""Bringing one part of the next page on screen after a click.

Streamlit keeps the scroll position across reruns and page switches, so a button far down one page
(Generate, a History card's Open) would show the next page at that same depth: mid-form, or past the
pictures. The click asks for a part here; the view that draws that part calls `draw_if_asked`.
"""

import uuid

import streamlit as st

ASKED = "scroll_to"
# The parts that can be asked for, as CSS selectors: fixed here, so no user text ever reaches the script.
PARTS = {"job": ".st-key-job-status", "form": ".st-key-compose-form", "product": ".st-key-product-open",
         "product-form": ".st-key-product-form", "catalog": ".st-key-catalog-head",
         "add-refused": ".st-key-add-refused"}
# Parts that only need to be in sight, brought in from the nearest edge: a refusal under the button that was
# clicked, where scrolling it to the top would hide the form it is about.
NEAREST = {"add-refused"}
# Waits for the part to be drawn, then scrolls it to the top unless it is already in the screen's upper third
# (a NEAREST part: into sight unless it is all on screen).
# It tries again until the part is there: what is drawn below it may come later (a new catalog grid), the page
# too short to scroll that far until then. It stops when the time is up or the user scrolls, touches, clicks or
# types.
SCRIPT = """<script>(() => {{ /* {nonce} */
  const until = Date.now() + 8000;
  let user = false;
  const stop = () => {{ user = true; }};
  ['wheel', 'touchstart', 'keydown', 'mousedown'].forEach(e => window.addEventListener(e, stop, {{once: true}}));
  const go = () => {{
    const part = document.querySelector('{selector}');
    if (part) {{
      const box = part.getBoundingClientRect(), nearest = {nearest};
      if (box.top >= 0 && (nearest ? box.bottom <= window.innerHeight : box.top <= window.innerHeight / 3)) return;
      part.scrollIntoView({{block: nearest ? 'nearest' : 'start'}});
    }}
    if (!user && Date.now() < until) setTimeout(go, 100);
  }};
  go();
}})();</script>"""


def ask(part: str) -> None:
    """The next run shows `part` on screen (call it before st.rerun or st.switch_page)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {sorted(PARTS)}, got {part!r}")
    st.session_state[ASKED] = part


def draw_if_asked(part: str) -> None:
    """Called where `part` is drawn: scrolls to it once, when a click asked for it."""
    if st.session_state.get(ASKED) != part:
        return
    del st.session_state[ASKED]
    st.html(SCRIPT.format(nonce=uuid.uuid4().hex, selector=PARTS[part], nearest=str(part in NEAREST).lower()),
            unsafe_allow_javascript=True)
