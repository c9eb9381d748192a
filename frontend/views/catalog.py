"""The Catalog page: pick products x styles x pictures, see what it costs, send it, and watch one grid fill.

The run's job ids ride in the URL as ?jobs=<id>,<id>,... so a reload (or the link on another device) brings
the grid back. A new run replaces the grid; the old one stays in History and behind its link.
"""

import streamlit as st

from frontend import catalog_run, cost, nav, services, speed
from frontend.catalog_run import Plan
from frontend.client import BackendError
from frontend.placement import ASPECTS, canvas_size, shape_help
from frontend.views import catalog_grid, scroll

URL_KEY = "jobs"
RUN = "catalog_run"        # this session's run, kept when another page is visited (Streamlit drops the URL)
REFUSAL = "catalog_refusal"
LEFT = "catalog_left"      # jobs not sent after a refusal: the page offers to send them
KEEP = "session"          # the picks are kept while the user visits another page
LOOKS = {"exact": "Exactly as photographed", "drawn": "Drawn by Showroom"}
LOOK_CAPTIONS = [("Each product's own photo is placed in the scene, pixel for pixel; a product without a photo "
                  "is drawn."), "Showroom draws the product from what it has learnt about it, or from its name."]


def draw() -> None:
    st.markdown("#### Catalog")
    st.caption("Picture many products in many styles at once: every product you pick is made in every style you "
               "pick.")
    ids = run_ids()
    health = services.current_health()
    catalog = _catalog_or_reason(health)
    if catalog is not None:
        if ids:
            with st.expander("Start another catalog run", icon=":material/add_photo_alternate:"):
                _picker(catalog, health)
        else:
            _picker(catalog, health)
    if st.session_state.get(LEFT):
        _left_over()
    elif refusal := st.session_state.get(REFUSAL):
        st.error(refusal, icon=":material/block:")  # outside the picker: it may be folded away
    if ids:
        names = {t["id"]: t.get("name") or t["id"] for t in (catalog or {}).get("templates", [])}
        packshots = {p["name"]: p["packshot_key"] for p in (catalog or {}).get("products", []) if p.get("packshot_key")}
        catalog_grid.draw(ids, names, packshots, again=_again)


def run_ids() -> list[str]:
    """The run in the URL; else the one this session last made (the URL is dropped on a page switch)."""
    ids = catalog_run.ids_from_url(st.query_params.get(URL_KEY))
    if ids:
        st.session_state[RUN] = ids
    elif st.session_state.get(RUN):
        ids = st.session_state[RUN]
        st.query_params[URL_KEY] = catalog_run.ids_to_url(ids)  # the link can be shared again
    return ids


def _catalog_or_reason(health: services.Health) -> dict | None:
    if health.state == "offline":
        st.warning("The generator is offline, so no new pictures can be made right now. A run already made "
                   "is shown from storage.", icon=":material/cloud_off:")
        return None
    try:
        return services.current_catalog()
    except BackendError as e:
        st.warning(f"The generator could not list products and styles: {e.message}", icon=":material/cloud_off:")
        return None


def _picker(catalog: dict, health: services.Health) -> None:
    products = {p["name"]: p for p in catalog.get("products", [])}
    if not products:
        st.info("There are no products yet: add them first, each from a photo.", icon=":material/inventory_2:")
        st.page_link(nav.page("products"), label="Add products", icon=":material/inventory_2:")
        return
    exact = st.radio("How your products appear", list(LOOKS), format_func=LOOKS.get, captions=LOOK_CAPTIONS,
                     horizontal=True, key="catalog_look", persist_state=KEEP) == "exact"
    styles = {t["id"]: t for t in catalog_run.styles_for(catalog.get("templates", []), exact)}
    _keep_known("catalog_products", products)
    _keep_known("catalog_styles", styles)
    left, right = st.columns(2)
    # wrap: in a column Streamlit keeps the chips on one scrolling line, and all but the last picks were hidden
    picked = left.multiselect("Products", list(products), key="catalog_products", persist_state=KEEP,
                              placeholder="Pick products", wrap=True,
                              format_func=lambda n: f"{n} · {products[n].get('category') or 'uncategorised'}")
    chosen = right.multiselect("Styles", list(styles), key="catalog_styles", persist_state=KEEP,
                               placeholder="Pick styles", wrap=True,
                               format_func=lambda i: f"{styles[i]['name']} · {styles[i].get('category') or 'other'}")
    count, shape = st.columns([3, 2], vertical_alignment="bottom")
    num = count.slider("Pictures of each product in each style", 1, 16, 4, key="catalog_num", persist_state=KEEP)
    aspect = shape.segmented_control("Shape", list(ASPECTS), default="1:1", key="catalog_shape", persist_state=KEEP,
                                     required=True, help=shape_help(health.native_size))
    with st.expander("Advanced settings", icon=":material/tune:"):
        # no range here: a browser keeps a typed value outside it to itself, and the run went on without it
        steps = st.number_input("Steps", value=None, step=1, key="catalog_steps", persist_state=KEEP,
                                placeholder="each style's own",
                                help=f"{catalog_run.STEPS[0]} to {catalog_run.STEPS[1]}. More are slower and a "
                                     "little more detailed; left empty, each style uses its own.")
    width, height = canvas_size(aspect or "1:1", health.native_size)
    refused = catalog_run.steps_problem(steps)
    plan = catalog_run.plan([products[n] for n in picked], [styles[i] for i in chosen], num, width, height,
                            None if refused else steps, exact)
    steps_said = None if refused or not chosen else f"{steps:g} steps" if steps else \
        f"each style's own steps ({catalog_run.own_steps([styles[i] for i in chosen])})"
    _summary(plan, [products[n] for n in picked] if exact else [], width, height, steps_said)
    if refused:
        st.error(refused, icon=":material/block:")
    _not_learnt(catalog_run.drawn_unlearnt(plan, [products[n] for n in picked]), [products[n] for n in picked],
                [styles[i] for i in chosen], exact)
    if not health.can_generate:
        st.warning(f"No pictures can be made right now: {health.detail or 'the generator reports an error'}.")
    label = f"Make {plan.images} picture{'s' if plan.images != 1 else ''}" if plan.jobs else "Make the pictures"
    if st.button(label, type="primary", key="catalog-submit", icon=":material/auto_awesome:", width="stretch",
                 disabled=not plan.jobs or plan.too_many or not health.can_generate or refused is not None,
                 help=refused):
        _submit(plan)


def _keep_known(key: str, known: dict) -> None:
    """A pick that is no longer offered (a product removed, a style not made for this look) is dropped."""
    if key in st.session_state:
        st.session_state[key] = [v for v in st.session_state[key] if v in known]


def _summary(plan: Plan, exact_products: list[dict], width: int, height: int, steps: str | None) -> None:
    """`steps`: the steps sent, in words; None while the field holds steps that cannot be sent (no cost then)."""
    if not plan.jobs:
        st.caption("Pick at least one product and one style to see how many pictures that makes.")
        return
    products = len({e.product for e in plan.entries})
    styles = plan.jobs // products
    per = plan.entries[0].spec["num_images"]
    with st.container(border=True, key="catalog-summary"):
        st.markdown(f"**{_n(products, 'product')} × {_n(styles, 'style')} × {_n(per, 'picture')} = "
                    f"{_n(plan.images, 'picture')}**, in {_n(plan.jobs, 'job')} of {width} × {height}"
                    + (f" at {steps}" if steps else ""))
        if steps:
            st.markdown(f'<span class="sr-meta" id="catalog-cost">Cost: {cost.amount(plan.cost)} of work'
                        f'{_estimate(plan)}. A standard picture is 512 × 512 at 30 steps; a bigger or longer one '
                        "counts more.</span>", unsafe_allow_html=True)
        if plan.batches > 1:
            st.caption(f"Sent as {plan.batches} batches of up to {catalog_run.MAX_BATCH} jobs, one after another.")
    if plan.too_many:
        st.error(f"One run makes at most {catalog_run.MAX_RUN_JOBS} jobs, and this is {plan.jobs}. Pick fewer "
                 "products or styles, and make the others in a second run.", icon=":material/block:")
    if steps and (too_big := plan.too_big()):
        st.warning(f"The job for {too_big[0].label} is {cost.amount(too_big[0].cost)} of work; the generator "
                   f"usually takes at most {cost.amount(cost.DEFAULT_MAX_JOB_COST)} in one job, so it may be "
                   "refused. Choose fewer pictures, a smaller shape or fewer steps.", icon=":material/warning:")
    drawn = [p["name"] for p in exact_products if not p.get("packshot_key") and p.get("has_lora")]
    if drawn:
        st.caption(f"{', '.join(drawn)} {'has' if len(drawn) == 1 else 'have'} no photo, so Showroom draws "
                   f"{'it' if len(drawn) == 1 else 'them'} instead.")


def _estimate(plan: Plan) -> str:
    """" (about 3 min once it starts, $0.05)", measured on this generator's finished jobs of the run's mode."""
    if not (measured := services.generator_speed(plan.entries[0].spec.get("mode"))):
        return ""
    hour_price = services.settings().gpu_hour_price
    return f" ({speed.estimate(measured, plan.work, plan.images, services.current_health().workers, hour_price)})"


def _not_learnt(unlearnt: list[dict], picked: list[dict], chosen: list[dict], exact: bool) -> None:
    """Products the run would draw without having learnt them: said before any GPU time is spent, with the
    way to the owner's own products where there is one (placing their photos). The run is not blocked."""
    if not unlearnt:
        return
    one = len(unlearnt) == 1
    them, names = ("it" if one else "them"), _and([p["name"] for p in unlearnt])
    like = f"Drawn, {'it' if one else 'each'} comes from its name alone: a product like yours, not yours."
    teach = f"teach Showroom {'the product' if one else 'the products'} on the Products page"
    if exact:  # only a product without a photo is drawn here
        st.warning(f"**Showroom has not learnt {names} yet and has no photo of {them}.** {like} "
                   f"{teach.capitalize()}, or add {them} again from a photo.", icon=":material/school:")
        return
    placeable = any(p.get("packshot_key") for p in unlearnt)
    way = f"Place {'its photo' if one else 'their photos'} exactly as photographed, or {teach}." if placeable \
        else f"{teach.capitalize()}."
    st.warning(f"**Showroom has not learnt {names} yet.** {like} {way}", icon=":material/school:")
    if placeable:
        st.button("Place exactly as photographed", key="catalog-place-instead", icon=":material/add_photo_alternate:",
                  on_click=_place_instead)
        _switch_note(picked, chosen)


def _switch_note(picked: list[dict], chosen: list[dict]) -> None:
    """The look is the whole run's: what else placing changes, said before the click."""
    also = [p["name"] for p in picked if p.get("has_lora") and p.get("packshot_key")]
    left_out = [t.get("name") or t["id"] for t in chosen if not catalog_run.suits(t, "place")]
    notes = [f"{_and(also)} {'is' if len(also) == 1 else 'are'} placed too"] if also else []
    if left_out:
        notes.append(f"{_and(left_out)} {'is' if len(left_out) == 1 else 'are'} not made for placing and "
                     f"{'leaves' if len(left_out) == 1 else 'leave'} the run")
    if notes:
        st.caption(f"For the whole run: {'; '.join(notes)}.")


def _place_instead() -> None:
    st.session_state["catalog_look"] = "exact"


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _submit(plan: Plan) -> None:
    st.session_state.pop(REFUSAL, None)
    st.session_state.pop(LEFT, None)
    st.session_state.pop(catalog_grid.STOPPED, None)  # a new run: the last one's stop offers nothing here
    _send(plan.entries, keep=None)


def _again(entries: list[catalog_run.Entry], leaving: list[str]) -> None:
    """The pictures a stop left unmade, sent as new jobs of this run; `leaving`: stopped jobs that made none."""
    st.session_state.pop(REFUSAL, None)
    st.session_state.pop(LEFT, None)
    _send(entries, keep=[i for i in run_ids() if i not in leaving])


def _send(entries: list[catalog_run.Entry], keep: list[str] | None) -> None:
    """`keep`: the run's jobs the new ones join; None: a new run."""
    outcome = catalog_run.send(services.client(), entries)
    if outcome.refusal:
        st.session_state[REFUSAL] = outcome.refusal
    if outcome.left and (outcome.job_ids or keep is not None):
        st.session_state[LEFT] = outcome.left   # part of the run is going: the rest can follow
    if not outcome.job_ids:
        return
    ids = [*(keep or []), *outcome.job_ids]
    st.session_state[RUN] = ids
    st.query_params[URL_KEY] = catalog_run.ids_to_url(ids)
    services.history.clear()  # History lists them at once
    services.queue_changed()  # and the header counts them
    scroll.ask("catalog")  # the button is far down the picker: the new grid starts below it
    st.rerun()


def _left_over() -> None:
    """Jobs not sent after a refusal part-way through a run: say so, and offer to send them."""
    left = st.session_state[LEFT]
    with st.container(border=True, key="catalog-left"):
        if refusal := st.session_state.get(REFUSAL):
            st.warning(refusal, icon=":material/hourglass_top:")
        if st.button(f"Send the remaining {_n(len(left), 'job')}", key="catalog-send-rest",
                     icon=":material/send:"):
            st.session_state.pop(REFUSAL, None)
            st.session_state.pop(LEFT, None)
            _send(left, keep=run_ids())
