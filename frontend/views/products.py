"""Products: the catalog's products, and a form to add one (its LoRA, trigger words, category)."""

import json

import streamlit as st

from backend.storage import StorageError
from frontend import services
from frontend.client import BackendError


def draw() -> None:
    listing, form = st.columns([6, 5], gap="large")
    with listing:
        st.markdown("#### Your products")
        _listing()
    with form:
        st.markdown("#### Add a product")
        if added := st.session_state.pop("product_added", None):
            st.success(f"Added **{added}**: choose it on the Create page.")
        _form()


def _products() -> list[dict]:
    """From the generator's catalog; with the generator off, from storage, where the records live."""
    if services.current_health().state != "offline":
        try:
            return services.current_catalog().get("products", [])
        except BackendError:
            pass
    store = services.storage()
    if store is None:
        return []
    found = []
    for key in store.list_files("products/"):
        if key.endswith(".json"):
            try:
                record = json.loads(store.get(key))
            except (StorageError, ValueError):
                continue
            if isinstance(record, dict) and isinstance(record.get("name"), str):
                found.append(record)
    return sorted(found, key=lambda p: p.get("name", ""))


def _listing() -> None:
    try:
        products = _products()
    except StorageError as e:
        st.error(f"The product list cannot be read right now: {e}")
        return
    if not products:
        st.markdown('<div class="sr-empty"><h3>No products yet</h3>Fine-tune a LoRA on your product, then '
                    'add it here with the words that call it up.</div>', unsafe_allow_html=True)
        return
    for product in products:
        with st.container(border=True, key=f"product-{product['name']}"):
            name, badge = st.columns([3, 1], vertical_alignment="center")
            name.markdown(f"**{product['name']}**  \n`{product.get('trigger', '')}`")
            with badge:
                st.badge(product.get("category") or "uncategorised", color="violet")
            st.caption(f"LoRA weight {product.get('weight', 1.0)}")


def _form() -> None:
    offline = not services.current_health().can_generate
    if offline:
        st.info("Adding a product needs the generator, which is not available right now.")
    with st.form("add-product", clear_on_submit=True):
        name = st.text_input("Name", placeholder="red-bottle", help="Letters, digits, '-' or '_' (up to 64).")
        trigger = st.text_input("Trigger words", placeholder="sks bottle",
                                help="The words the LoRA was trained on; they replace `<product>` in prompts.")
        category = st.text_input("Category (optional)", placeholder="cosmetics")
        weight = st.slider("LoRA weight", 0.0, 2.0, 1.0, step=0.05)
        lora = st.file_uploader("LoRA file (.safetensors)", type=["safetensors"])
        submitted = st.form_submit_button("Add product", type="primary", disabled=offline,
                                          icon=":material/add:")
    if submitted:
        _add(name.strip(), trigger.strip(), category.strip() or None, weight, lora)


def _add(name: str, trigger: str, category: str | None, weight: float, lora) -> None:
    if not name or not trigger or lora is None:
        st.error("A product needs a name, its trigger words and its LoRA file.")
        return
    try:
        product = services.client().add_product(name, trigger, category, weight, (lora.name, lora.getvalue()))
    except BackendError as e:
        st.error(f"The product was not added: {e.message}")
        return
    services.catalog.clear()
    st.session_state["product_added"] = product["name"]
    st.rerun()  # so the list above shows it too
