"""Products: the list (each with its picture, what it can do, Open and Delete) and, beside it, either the
form to add one or the product that is open (?product=<name> in the URL, so a reload keeps it)."""

import html

import streamlit as st

from backend.contract import NAME_RE
from backend.storage import StorageError
from frontend import nav, services
from frontend.client import BackendError
from frontend.views import product_form, product_panel, scroll

CONFIRM = "confirm_delete_product"


def draw() -> None:
    name = open_product()
    try:
        products = services.product_records()
        if name and not any(p["name"] == name for p in products):  # a list read before it was added elsewhere?
            services.catalog.clear()
            products = services.product_records()
        listed = True
    except StorageError as e:
        st.error(f"The product list cannot be read right now: {e}")
        products, listed = [], False
    listing, side = st.columns([6, 5], gap="large")
    with listing:
        st.markdown("#### Your products")
        _listing(products)
    with side:
        product = next((p for p in products if p["name"] == name), None)
        if name and product is None and listed:
            _gone(name)
        if product is not None:
            with st.container(key="product-open"):  # on a phone, before the list (chrome.CSS)
                product_panel.draw(product)
            scroll.draw_if_asked("product")
        else:
            with st.container(key="product-form"):
                product_form.draw()
            scroll.draw_if_asked("product-form")


def _gone(name: str) -> None:
    """A link (or this session) names a product there is no longer: said, not silently replaced by the form. The
    link stays as it was (it is the page asked for); this session forgets the product, so the Products page opened
    later, without the link, shows the form alone. The name matched NAME_RE: plain letters, digits, '-' and '_'."""
    st.info(f"**There is no product named {name} now**: it may have been deleted. Add it again below, or open "
            "one from the list.", icon=":material/search_off:")
    st.session_state.pop("open_product", None)


def open_product() -> str | None:
    """The product in the URL; else the one this session last opened (Streamlit drops the query string
    when another page is visited). A value that is not a product name is ignored, never echoed."""
    name = st.query_params.get("product")
    if name and NAME_RE.fullmatch(name):
        st.session_state["open_product"] = name
        return name
    name = st.session_state.get("open_product")
    if name:
        st.query_params["product"] = name
    return name


def _listing(products: list[dict]) -> None:
    if not products:
        st.markdown('<div class="sr-empty"><h3>No products yet</h3>Add one with a few photos of it: Showroom cuts '
                    'it out at once, and can learn it so it appears in any scene.</div>', unsafe_allow_html=True)
        return
    for product in products:
        with st.container(border=True, key=f"product-{product['name']}"):
            with st.container(key=f"listed-{product['name']}"):  # side by side on a phone too (chrome.CSS)
                picture, words = st.columns([1, 3], vertical_alignment="center")
            with picture:
                _picture(product)
            with words:
                _card_words(product)


def _picture(product: dict) -> None:
    """Its packshot; without one, the newest picture made with it; else a plain tile."""
    url = services.settings().storage_url
    key = product.get("packshot_key")
    try:
        if key:
            st.image(services.cutout_on_checkerboard(services.packshot(url, key)), width="stretch")
            return
    except StorageError:
        pass
    if not key and product_panel.made_with_it(product, 192):
        return
    st.markdown('<div class="sr-thumb-empty">No picture</div>', unsafe_allow_html=True)


def _card_words(product: dict) -> None:
    name = product["name"]
    kind = html.escape(product.get("category") or "")
    said = product_panel.what_it_can_do(product) + _learning(product)
    st.markdown(f'<div class="sr-card-head"><b>{html.escape(name)}</b>'
                f'{f"<span class=sr-tag>{kind}</span>" if kind else ""}</div>'
                f'<span class="sr-meta">{html.escape(said)}</span>',
                unsafe_allow_html=True)
    if st.session_state.get(CONFIRM) == name:
        _confirm_delete(name)
        return
    with st.container(horizontal=True, gap="small"):
        if st.button("Open", key=f"open-product-{name}", icon=":material/open_in_full:"):
            nav.focus_product(name)
            scroll.ask("product")  # a card far down the list: the product is at the top (beside it, or above it)
            st.rerun()
        offline = services.current_health().state == "offline"
        if st.button("Delete", key=f"delete-product-{name}", icon=":material/delete:", disabled=offline,
                     help="Deleting needs the generator, which is offline" if offline else None):
            st.session_state[CONFIRM] = name
            st.rerun()


def _learning(product: dict) -> str:
    """" · learning now" while its latest training runs (its card said "not learnt yet" and looked idle)."""
    if not product.get("training"):
        return ""
    try:
        training = services.training_glance(services.settings().storage_url, product["training"])
    except StorageError:
        return ""
    if training is None or training.terminal:
        return ""
    again = " again" if product.get("has_lora") else ""
    if training.status == "running" and training.steps:
        return f" · learning{again} now, {round(100 * training.fraction)}%"
    return f" · waiting to learn{again}"


def _confirm_delete(name: str) -> None:
    st.markdown(f"**Delete {html.escape(name)}?** Its picture and what Showroom learnt of it are removed; "
                "pictures already made with it are kept.")
    with st.container(horizontal=True, gap="small"):
        confirmed = st.button("Delete for good", key=f"delete-product-yes-{name}", type="primary")
        if st.button("Keep it", key=f"delete-product-no-{name}"):
            st.session_state.pop(CONFIRM, None)
            st.rerun()
    if confirmed:
        try:
            services.client().delete_product(name)
        except BackendError as e:
            st.error(f"{name} was not deleted: {e.message}")
            return
        st.session_state.pop(CONFIRM, None)
        if st.session_state.get("open_product") == name:
            nav.focus_product(None)
        services.catalog.clear()
        services.packshot.clear()
        st.rerun()
