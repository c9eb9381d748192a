"""An optional password in front of the app (APP_PASSWORD): a public page with a GPU behind it is an open wallet."""

import hmac

import streamlit as st


def require_password(expected: str | None) -> None:
    """Return when no password is configured or this session entered it; otherwise draw the form and stop."""
    if not expected or st.session_state.get("authenticated"):
        return
    _, middle, _ = st.columns([1, 1.2, 1])
    with middle, st.form("login", border=True):
        st.markdown("### ◆ Showroom")
        st.caption("This studio is private. Enter the password you were given.")
        entered = st.text_input("Password", type="password", key="password")
        if st.form_submit_button("Enter", type="primary", width="stretch"):
            # compare_digest takes the same time wherever the first wrong character is
            if hmac.compare_digest(entered.encode(), expected.encode()):
                st.session_state["authenticated"] = True
                st.rerun()
            st.error("That password is not right.")
    st.stop()
