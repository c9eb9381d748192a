"""The frame around every page: the stylesheet, the header with the backend's status pill."""

import html

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from frontend import nav, services

CSS = """
<style>
.block-container {padding-top: 4.2rem; max-width: 1320px;}
.sr-brand {display: flex; align-items: baseline; gap: .7rem;}
.sr-brand h1 {font-size: 1.9rem; margin: 0; padding: 0; letter-spacing: -.02em;}
.sr-brand .sr-mark {color: var(--primary-color, #4F46E5);}
.sr-tagline {color: #6B6B80; font-size: .95rem; margin-top: .15rem;}
.sr-pill {display: inline-flex; align-items: center; gap: .45rem; padding: .32rem .8rem; border-radius: 999px;
  font-size: .85rem; font-weight: 600; border: 1px solid transparent; white-space: nowrap;}
.sr-pill .sr-dot {width: .55rem; height: .55rem; border-radius: 50%; background: currentColor;}
.sr-pill-online {background: #E8F7EE; color: #17803D; border-color: #BFE8CF;}
.sr-pill-loading, .sr-pill-degraded {background: #FFF5E5; color: #B25E00; border-color: #FBDDB0;}
.sr-pill-error, .sr-pill-refused {background: #FDECEC; color: #B42318; border-color: #F6C7C3;}
.sr-pill-offline {background: #F1F1F5; color: #5B5B6E; border-color: #DCDCE5;}
.sr-pill-loading .sr-dot {animation: sr-pulse 1.2s ease-in-out infinite;}
.sr-status {text-align: right;}
.sr-status-meta {color: #6B6B80; font-size: .8rem; margin-top: .3rem;}
/* room under the header: a button at the top of a page's right column (Add another product) touched its line */
.st-key-page-header {margin-bottom: .6rem;}
.sr-slot {position: relative; width: 100%; border-radius: .5rem; display: flex; align-items: center;
  justify-content: center; flex-direction: column; gap: .35rem; color: #6B6B80; font-size: .9rem;
  background: #F4F4F8; border: 1px dashed #D9D9E3; overflow: hidden; text-align: center; padding: .5rem;}
.sr-slot-running {background: linear-gradient(100deg, #F1F0FF 20%, #E2DFFF 40%, #F1F0FF 60%);
  background-size: 200% 100%; animation: sr-shimmer 1.4s linear infinite; color: #4F46E5; border-style: solid;
  border-color: #D6D2FF;}
.sr-slot-failed {background: #FDF1F0; color: #B42318; border-color: #F6C7C3;}
.sr-slot-canceled, .sr-slot-missing {background: #F6F6F8; color: #8A8A9A;}
.sr-slot-unread {background: #FFF8EC; color: #9A5B00; border-color: #FBDDB0;}
/* a placeholder keeps the room under it that a picture has: Streamlit pulls a text block's bottom up by 1rem (for
   a paragraph's margin), so tiles one above the other touched (the Catalog's rows) and a tile met its caption */
[data-testid="stMarkdownContainer"]:has(> .sr-slot) {margin-bottom: 0;}
/* likewise a job's prompt above its buttons (its last line sat on Download all's border) */
[data-testid="stMarkdownContainer"]:has(> .sr-job-prompt) {margin-bottom: 0;}
.sr-slot b {font-weight: 650;}
.sr-slot small {max-width: 95%; font-size: .78rem; line-height: 1.25;}
.sr-empty {border: 1px dashed #D9D9E3; border-radius: .8rem; padding: 2.6rem 1.5rem; text-align: center;
  color: #6B6B80; background: #FAFAFC;}
.sr-empty h3 {color: #1B1B2F; font-size: 1.15rem; margin-bottom: .3rem;}
.sr-prompt {color: #55556A; font-size: .84rem; line-height: 1.35; min-height: 3.4em;}
.sr-prompt .sr-style {color: #1B1B2F; font-weight: 600;}
.sr-card-head {display: flex; justify-content: space-between; align-items: baseline; gap: .5rem;
  margin-bottom: .35rem;}
.sr-card-head b {font-size: .95rem; line-height: 1.25;}
/* two style cards a row: a name keeps two lines' room beside its neighbour's, so the buttons of a row line up,
   and the words keep their room above the button (a third line sat on it) */
@media (min-width: 641px) {
  [class*="st-key-style-card-"] .sr-card-head {min-height: 2.4rem;}
  [class*="st-key-style-card-"] [data-testid="stMarkdownContainer"]:has(> .sr-card-head) {margin-bottom: 0;}
}
.sr-tag {text-transform: capitalize; font-size: .72rem; font-weight: 600; color: #5B4FD6; background: #EEECFF;
  padding: .1rem .5rem; border-radius: 999px; white-space: nowrap;}
.sr-clamp {display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden;
  min-height: 3.9em;}
.sr-meta {color: #6B6B80; font-size: .82rem;}
.sr-desc {color: #55556A; font-size: .86rem; line-height: 1.3;}
/* a History card's when / pictures / product line keeps two lines' room and its product name whole, so the cards
   of a row keep their buttons on one line (a name split at its hyphen made some cards a line taller) */
.sr-job-meta {display: block; min-height: 2lh;}
/* ... and each cover is square, as the tiles of a job with no picture are: a 4:5 or 9:16 job's cover was taller,
   its words and buttons lower than its neighbours' */
.st-key-history-grid [data-testid="stImage"] img {aspect-ratio: 1 / 1; object-fit: contain; background: #F4F4F8;}
.sr-nowrap {white-space: nowrap;}
/* a History card on a narrower desktop (four a row from 641 px): a tighter card and buttons, so Open, Reuse and
   Delete keep one line in a 1024 px window (at Streamlit's spacing Delete wrapped below 1280 px) */
@media (min-width: 641px) and (max-width: 1279.98px) {
  .st-key-history-grid [class*="st-key-job-"] {padding: .6rem;}
  .st-key-history-grid [data-testid="stButton"] button {padding-left: .3rem; padding-right: .3rem; gap: .2rem;}
  .st-key-history-grid div:has(> [class*="st-key-open-"]) {gap: .3rem;}
}
/* what a click scrolls into view (views/scroll.py): clear of the navigation bar drawn over the page's top */
.st-key-job-status, .st-key-compose-form, .st-key-product-open, .st-key-product-form,
.st-key-catalog-head {scroll-margin-top: 4.5rem;}
/* chips (style categories, canvas, position, status filters) wrap onto more lines instead of running off */
[data-testid="stButtonGroup"] > div {flex-wrap: wrap; row-gap: .45rem; overflow-x: visible;}
/* the pages as labelled links on a phone, where Streamlit folds its navigation into a bare "»" */
[data-testid="stLayoutWrapper"]:has(> .st-key-phone-nav) {display: none;}
.sr-slot-preview {border-style: solid; padding: 0;}
.sr-slot-preview img.sr-preview {position: absolute; inset: 0; width: 100%; height: 100%; object-fit: cover;}
.sr-slot-preview b {position: absolute; left: .45rem; top: .45rem; background: rgba(255, 255, 255, .88);
  color: #4F46E5; padding: .1rem .5rem; border-radius: 999px; font-size: .78rem;}
.sr-thumb-empty {aspect-ratio: 1 / 1; width: 100%; border-radius: .5rem; display: flex; align-items: center;
  justify-content: center; color: #8A8A9A; font-size: .8rem; background: #F4F4F8; border: 1px dashed #D9D9E3;}
/* a phone stacks columns one under the other: results and History keep two a row, so four pictures fit a
   screen, and pairs of settings (Width and Height) stay side by side */
@media (max-width: 640px) {
  .st-key-results-grid [data-testid="stHorizontalBlock"], .st-key-history-grid [data-testid="stHorizontalBlock"],
  [class*="st-key-pair-"] [data-testid="stHorizontalBlock"] {flex-wrap: wrap; gap: .5rem;}
  .st-key-results-grid [data-testid="stColumn"], .st-key-history-grid [data-testid="stColumn"],
  [class*="st-key-pair-"] [data-testid="stColumn"] {min-width: calc(50% - .25rem) !important;
    flex: 1 1 calc(50% - .25rem) !important; width: calc(50% - .25rem) !important;}
  /* under a picture half the screen wide, Download and Upscale 4x one under the other: side by side, both
     labels were cut to "D…" and "U…" */
  .st-key-results-grid [class*="st-key-image-actions-"] [data-testid="stColumn"] {min-width: 100% !important;
    flex: 1 1 100% !important; width: 100% !important;}
  /* a product's card keeps its picture beside its name and buttons (stacked, each picture was a screen wide),
     and the Create page's picker its product's picture */
  [class*="st-key-listed-"] [data-testid="stColumn"], .st-key-product-pick [data-testid="stColumn"] {
    min-width: 0 !important;}
  /* the open product's cut-out beside what it can do and Make pictures with it (stacked, the cut-out was a
     screen wide and pushed the button below the first screen) */
  .st-key-product-summary [data-testid="stColumn"] {min-width: 0 !important;}
  .st-key-product-summary [data-testid="stColumn"]:first-child {flex: 0 0 38% !important; width: 38% !important;}
  /* no second cut-out above the four test pictures: the product's own is just above them on a phone (this one
     was a screen wide and pushed the pictures below the first screen) */
  .st-key-check-compare [data-testid="stColumn"]:has(.st-key-check-mine), .st-key-check-mine {display: none;}
  /* what was opened (a job's pictures, a product) comes before the form or the list it sits beside */
  [data-testid="stColumn"]:has(.st-key-job-first), [data-testid="stColumn"]:has(.st-key-product-open) {order: -1;}
  /* a catalog's style: its name, state and Open on one line, then its pictures two a row (stacked, each
     picture was a screen wide and 36 pictures took 17 screens); a row's empty label column is dropped */
  [class*="st-key-catalog-row-"] [data-testid="stHorizontalBlock"] {flex-wrap: wrap; gap: .5rem;}
  [class*="st-key-catalog-row-"] [data-testid="stColumn"] {min-width: calc(50% - .25rem) !important;
    flex: 0 0 calc(50% - .25rem) !important; width: calc(50% - .25rem) !important;}
  [class*="st-key-catalog-row-"] [data-testid="stColumn"]:first-child {min-width: 100% !important;
    flex-basis: 100% !important; width: 100% !important;}
  [class*="st-key-catalog-row-"] [data-testid="stColumn"]:first-child:not(:has([class*="st-key-catalog-label-"])) {
    display: none;}
  [class*="st-key-catalog-label-"] {flex-direction: row; flex-wrap: wrap; align-items: center; column-gap: .75rem;}
  [class*="st-key-catalog-label-"] > div {width: auto !important;}
}
/* below Streamlit's md breakpoint the top navigation becomes a sidebar behind "»": ours replaces it */
@media (max-width: 767.98px) {
  [data-testid="stLayoutWrapper"]:has(> .st-key-phone-nav) {display: block; position: sticky; top: 0;
    z-index: 999991; background: #FFFFFF; margin: -3.6rem -1rem 0; padding: .5rem .6rem;
    min-width: calc(100% + 2rem); border-bottom: 1px solid #E6E6EE;}
  .st-key-phone-nav {gap: .25rem !important; flex-wrap: wrap;}
  .st-key-phone-nav a {border: 1px solid #DCDCE5; border-radius: 999px; padding: 0 .45rem; gap: .25rem;}
  .st-key-phone-nav a p {font-size: .9rem;}
  [data-testid="stExpandSidebarButton"] {display: none;}
}
/* placeholders read as hints, not as text already typed (an empty prompt must look empty) */
textarea::placeholder, input::placeholder {color: #B4B4C3 !important; opacity: 1;}
@keyframes sr-shimmer {to {background-position: -200% 0;}}
@keyframes sr-pulse {50% {opacity: .3;}}
</style>
"""


REMOVER_MISSING = ("Showroom cannot cut products out right now: its background remover is not set up on the "
                   "backend, and whoever runs it can fix this.")


def backend_said(message: str) -> None:
    """The backend's own words, for whoever runs it, folded away under the plain ones."""
    with st.expander("What the backend said"):
        st.code(message, language=None, wrap_lines=True)


def inject_css() -> None:
    st.html(CSS)


def status_pill(h: services.Health) -> str:
    return (f'<span class="sr-pill sr-pill-{h.state}" title="{html.escape(h.detail or "")}">'
            f'<span class="sr-dot"></span>Generator: {html.escape(h.label)}</span>')


def status_meta(h: services.Health) -> str:
    if h.state == "offline":
        return "History stays available; generation is paused."
    if h.state == "refused":
        return h.detail[:1].upper() + h.detail[1:]
    # plain words: where pictures are made, and how many at once (the workers), never "CPU worker"
    at_once = f", {h.workers} pictures at a time" if h.workers > 1 else ""
    if not h.gpus:
        hardware = f"Running on the processor{at_once}"
    else:
        hardware = f"Running on {h.gpus} GPU{'s' if h.gpus != 1 else ''}{at_once}"
    parts = [hardware, f"{h.pending} image{'s' if h.pending != 1 else ''} in queue"]
    return " · ".join(parts) + (f" — {h.detail}" if h.detail else "")


def header() -> DeltaGenerator:
    """The header, its status drawn at once; the status's place is returned for the entry point to make it live
    once the page has run (live_status), so that it counts what the page just sent."""
    _phone_nav()
    with st.container(key="page-header"):
        brand, status = st.columns([3, 2], vertical_alignment="center")
    brand.markdown('<div class="sr-brand"><h1><span class="sr-mark">◆</span> Showroom</h1></div>'
                   '<div class="sr-tagline">Studio-quality pictures of your product, in any scene.</div>',
                   unsafe_allow_html=True)
    slot = status.empty()
    with slot:
        _status()
    return slot


def _phone_nav() -> None:
    """Every page as a labelled link, shown only on a narrow screen (see CSS)."""
    with st.container(horizontal=True, gap="small", key="phone-nav"):
        for page in nav.PAGES.values():
            st.page_link(page)


@st.fragment(run_every=5)  # as long as services.health keeps an answer: work sent from elsewhere shows within 5 s
def live_status() -> None:
    _status()


def _status() -> None:
    h = services.current_health()
    st.markdown(f'<div class="sr-status">{status_pill(h)}<div class="sr-status-meta">'
                f'{html.escape(status_meta(h))}</div></div>', unsafe_allow_html=True)
