"""The Create page: compose a job on the left, watch its pictures land on the right.

A phone stacks the two. With a job open (a shared link, History's Open, a job just started) its pictures
come first there, the form after them: the stylesheet orders the column marked `job-first` ahead
(chrome.CSS), since only CSS knows the screen's width. A desktop keeps the form on the left.
"""

import hashlib
import json
import uuid

import streamlit as st

from backend.storage import StorageError
from frontend import catalog_run, cost, nav, placement, reuse, services, speed, uploads
from frontend.client import BackendError, BackendOffline
from frontend.jobs import is_job_id
from frontend.placement import PRESETS
from frontend.views import job_actions, job_panel, photo, scroll, styles
from frontend.views.photo import PhotoChoice

MAX_SEED = reuse.MAX_SEED
NO_PRODUCT = ""  # not None: a selectbox shows None as "nothing chosen yet"
# Kept across page switches: Streamlit forgets a widget's value when a page without it is drawn.
COMPOSE_KEYS = ("product", "template_id", "prompt", "negative", "num_images", "steps", "guidance", "width",
                "height", "seed", "strength", "style_category", "all_styles", "mode", "aspect", "place_at",
                "place_scale", "shadow", "harmonize", "reflection")


def keep_compose_state() -> None:
    for key in COMPOSE_KEYS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def _defaults(native: int) -> None:
    values = {"product": NO_PRODUCT, "template_id": None, "prompt": "", "negative": "", "num_images": 4, "steps": 30,
              "guidance": 7.5, "width": native, "height": native, "seed": None, "strength": 0.5, "mode": "generate",
              "aspect": "1:1", "place_at": "centre", "place_scale": 0.6, "shadow": True, "harmonize": True,
              "reflection": 0.0}
    for key, value in values.items():
        st.session_state.setdefault(key, value)


def draw() -> None:
    health = services.current_health()
    compose_col, results_col = st.columns([5, 7], gap="large")
    with compose_col, st.container(key="compose-form"):
        catalog = _catalog_or_reason(health)
        if catalog is not None:
            _compose(catalog, health)
    scroll.draw_if_asked("form")
    job_id = open_job()  # after the form: Generate may have just opened a job
    with results_col, st.container(key="job-first" if job_id else "job-none"):
        job_panel.draw(job_id)


def open_job() -> str | None:
    """The job in the URL; else the one this session last opened, since Streamlit drops the query
    string when another page is visited (Create → Products → Create keeps the job on screen)."""
    job_id = st.query_params.get("job")
    if job_id:
        if is_job_id(job_id):
            st.session_state["open_job"] = job_id
    elif st.session_state.get("open_job"):
        job_id = st.query_params["job"] = st.session_state["open_job"]  # the link is shareable again
    return job_id


def _catalog_or_reason(health: services.Health) -> dict | None:
    if health.state == "offline":
        _unavailable("The generator is offline, so generation is unavailable right now.",
                     "Your finished pictures are safe: browse them in History, or open a job link.")
        return None
    try:
        return services.current_catalog()
    except BackendError as e:
        _unavailable("Generation is unavailable: the generator could not list products and styles.", e.message)
        return None


def _unavailable(title: str, body: str) -> None:
    st.warning(f"**{title}**\n\n{body}", icon=":material/cloud_off:")
    st.page_link(nav.page("history"), label="Browse history", icon=":material/photo_library:")


def _compose(catalog: dict, health: services.Health) -> None:
    _defaults(health.native_size)
    if note := st.session_state.pop(job_actions.NOTE, None):
        st.info(note, icon=":material/tune:")
    _reuse_picture()
    st.markdown("##### 1 · Product and photo")
    products = {p["name"]: p for p in catalog.get("products", [])}
    if st.session_state.get("product") not in products:
        st.session_state["product"] = NO_PRODUCT
    with st.container(key="product-pick"):  # the picture stays beside the picker on a phone (chrome.CSS)
        pick, picture = st.columns([5, 1], vertical_alignment="bottom")
    pick.selectbox("Product", [NO_PRODUCT, *products], key="product",
                   format_func=lambda n: "No product (generic scene)" if n == NO_PRODUCT else
                   f"{n} — {products[n].get('category') or 'uncategorised'}",
                   help="Its LoRA, when it has one, is applied; `<product>` becomes its trigger words; in place "
                        "mode its cut-out stands in for a photo.")
    with picture:
        _product_picture(products.get(st.session_state["product"]))
    if not products:
        st.page_link(nav.page("products"), label="No products yet: add your first on the Products page",
                     icon=":material/add_photo_alternate:")
    choice = photo.section(products.get(st.session_state["product"]), health.native_size)

    st.markdown("##### 2 · Style")
    styles.gallery(catalog.get("templates", []), choice.mode)

    st.markdown("##### 3 · Describe the shot")
    st.text_area("Prompt", key="prompt", height=100, max_chars=1000,
                 placeholder="<product> on a marble counter, soft morning light")
    st.caption("Write `<product>` where your product goes in the picture.")
    st.text_area("What to keep out (optional)", key="negative", height=68,
                 placeholder="blurry, low quality, text, watermark",
                 help="The negative prompt: things the pictures should not show.")
    st.slider("Number of images", 1, 16, key="num_images")
    with st.expander("Advanced settings", icon=":material/tune:", expanded=_settings_problem() is not None):
        # No range on these fields: a browser keeps a typed value outside it to itself, and Generate went on with
        # the old one. Each is checked below instead (_settings_problem), and Generate waits for a good one.
        # Each pair in a row of its own, kept side by side on a phone too (chrome.CSS: .st-key-pair-*).
        with st.container(key="pair-quality"):
            left, right = st.columns(2)
        left.number_input("Steps", step=1, key="steps",
                          help="Inference steps, 1 to 150: more are slower and a little more detailed; 25-40 is usual.")
        right.number_input("Follow the prompt", step=0.5, key="guidance",
                           help="Guidance scale (CFG), 0 to 30: higher follows the words more strictly, lower is "
                                "freer; 5-9 is usual.")
        with st.container(key="pair-size"):
            left, right = st.columns(2)
        sizes = "64 to 2048, a multiple of 8."
        left.number_input("Width", step=8, key="width", on_change=photo.custom_size, help=sizes)
        right.number_input("Height", step=8, key="height", on_change=photo.custom_size, help=sizes)
        st.number_input("Seed", step=1, key="seed", placeholder="random",
                        help="Image i is made from seed + i: the same seed gives the same pictures.")
    problem = _settings_problem()
    if problem:
        st.error(problem, icon=":material/tune:")
    else:
        _cost_line(choice.mode, health)
    blocked = problem or choice.blocked
    if health.state == "loading":
        st.caption("The model is still loading: your job waits in the queue and starts as soon as it is ready.")
    elif not health.can_generate:
        st.warning(f"Generation is unavailable: {health.detail or 'the generator reports an error'}.")
    elif choice.blocked and not problem:
        st.caption(choice.blocked)
    if st.button("Generate", type="primary", width="stretch", key="generate", icon=":material/auto_awesome:",
                 disabled=not health.can_generate or blocked is not None, help=blocked):
        _submit(choice)


SIDES = (placement.MIN_SIDE, placement.MAX_SIDE)
SETTING_RANGES = {"steps": ("Steps", *catalog_run.STEPS), "guidance": ("Follow the prompt", 0.0, 30.0),
                  "width": ("Width", *SIDES), "height": ("Height", *SIDES), "seed": ("Seed", 0, MAX_SEED)}


def _settings_problem() -> str | None:
    """What in Advanced settings cannot be sent, with the value and its range; None when all can."""
    ss = st.session_state
    for key, (label, low, high) in SETTING_RANGES.items():
        value = ss.get(key)
        if value is None:
            if key != "seed":  # an empty seed is a random one
                return f"{label} is empty: give it a value from {low:g} to {high:g} in Advanced settings."
        elif not low <= value <= high:
            return f"{label} goes from {low:g} to {high:g}, and it is {value:g}: change it in Advanced settings."
    for key in ("width", "height"):
        if int(ss[key]) % 8:
            return (f"{key.capitalize()} must be a multiple of 8, and it is {ss[key]}: {int(ss[key]) // 8 * 8} or "
                    f"{int(ss[key]) // 8 * 8 + 8} would do (Advanced settings).")
    return None


def _cost_line(mode: str, health: services.Health) -> None:
    """What the job will cost the generator, counted as the backend counts it, before it is sent; once this
    generator has finished a few jobs, how long it will take and (with GPU_HOUR_PRICE) what it costs."""
    ss = st.session_state
    try:
        width, height, steps, count = int(ss["width"]), int(ss["height"]), int(ss["steps"]), int(ss["num_images"])
    except (KeyError, TypeError, ValueError):
        return
    total = cost.job_cost(width, height, steps, count)
    why = "A standard picture is 512 x 512 at 30 steps; bigger or longer pictures count more."
    estimate = ""
    if measured := services.generator_speed(mode):
        hour_price = services.settings().gpu_hour_price
        asked = speed.work(width, height, steps, count)
        estimate = f" · {speed.estimate(measured, asked, count, health.workers, hour_price)}"
        why += " " + speed.basis(measured, hour_price)
    st.markdown(f'<span class="sr-meta" id="job-cost">{count} picture{"s" if count != 1 else ""} of {width} x {height} '
                f"at {steps} steps: {cost.amount(total)} of work{estimate}</span>", unsafe_allow_html=True, help=why)
    if total > cost.DEFAULT_MAX_JOB_COST:
        st.warning(f"That is more than the generator usually takes in one job ({cost.amount(cost.DEFAULT_MAX_JOB_COST)}"
                   "): ask for fewer, smaller or shorter pictures, or it may refuse the job.")


def _reuse_picture() -> None:
    with st.expander("Reuse a picture's settings", icon=":material/image_search:"):
        # JPEG and WebP too: refused here in words (they keep no settings), not by the box's bare "not allowed"
        st.file_uploader("A PNG made by Showroom (or AUTOMATIC1111)", type=photo.PHOTO_TYPES, key=job_actions.PICTURE,
                         max_upload_size=uploads.picture_mb(),
                         on_change=job_actions.use_picture,
                         help="Its prompt, size, steps, guidance and seed (and, from Showroom, its product, style "
                              "and mode) fill the form below.")
        if refusal := st.session_state.get(job_actions.PICTURE_REFUSAL):
            st.warning(refusal, icon=":material/info:")


def _product_picture(product: dict | None) -> None:
    """The chosen product's packshot, small; without one, the newest picture made with it; else nothing.
    No caption: the picker beside it names the product, and a long name wrapped under 72 pixels onto three
    lines, which pushed the picker down by as much."""
    if not product:
        return
    url, key = services.settings().storage_url, product.get("packshot_key")
    try:
        if key:
            st.image(services.cutout_on_checkerboard(services.packshot(url, key)), width=72)
            return
        made = services.pictures_by_product(url).get(product["name"])
        if made:
            st.image(services.thumbnail(url, made, 144), width=72)
    except StorageError:
        return


def _prompt_problem() -> str | None:
    """Said after Generate, not before: the button stays pressable while the prompt is typed, or the click that
    ends the typing (it leaves the box) would fall on a disabled button and be lost."""
    return None if (st.session_state["prompt"] or "").strip() else "Write a prompt, or choose a style to start from."


def _spec(mode: str) -> dict:
    """The form as a JobSpec, once _prompt_problem and _settings_problem find nothing."""
    ss = st.session_state
    prompt = ss["prompt"].strip()
    spec = {"prompt": prompt, "negative_prompt": ss["negative"] or "", "product": ss["product"] or None,
            "template": ss["template_id"], "num_images": int(ss["num_images"]), "steps": int(ss["steps"]),
            "guidance_scale": float(ss["guidance"]), "width": int(ss["width"]), "height": int(ss["height"]),
            "seed": None if ss["seed"] is None else int(ss["seed"]), "mode": mode}
    if mode == "restyle":
        spec["strength"] = float(ss["strength"])
    if mode == "place":
        at = PRESETS[ss["place_at"] or "centre"]
        spec |= {"placement": {"x": at.x, "y": at.y, "scale": float(ss["place_scale"])},
                 "shadow": bool(ss["shadow"]), "harmonize": bool(ss["harmonize"]),
                 "reflection": float(ss["reflection"])}
    return spec


def _submit(choice: PhotoChoice) -> None:
    # checked here too: a value typed just before the click reaches this run with the click
    if problem := _prompt_problem() or _settings_problem():
        st.error(problem)
        return
    spec = _spec(choice.mode)
    upload = choice.upload
    try:
        ticket = services.client().submit(spec, upload, idempotency_key=_submission_key(spec, upload))
    except BackendOffline as e:
        st.error(f"The generator did not answer ({e.message}). The job may have started: press Generate "
                 "again to pick it up (the same request is never queued twice), or look in History.")
        return
    except BackendError as e:
        st.session_state.pop("submission", None)  # refused: a corrected request is a new one
        st.error(f"The job was not started: {e.message}")
        return
    st.session_state.pop("submission", None)  # answered: the next Generate is a new job
    services.history.clear()  # History lists it at once
    services.queue_changed()
    job_actions.remember_ticket(ticket, spec)
    st.session_state["open_job"] = st.query_params["job"] = ticket["id"]
    scroll.ask("job")  # the button is far down the form (on a phone, the job is above it): show its status


def _submission_key(spec: dict, upload: tuple | None) -> str:
    """One Idempotency-Key per request until it is answered: pressing Generate again after a timeout
    sends the same key, so the backend returns the first ticket instead of queueing a second job."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode() + (upload[1] if upload else b"")).hexdigest()
    pending = st.session_state.get("submission")
    if not pending or pending[0] != digest:
        pending = st.session_state["submission"] = (digest, uuid.uuid4().hex)
    return pending[1]
