"""Clock times as the viewer reads them: in the time zone their browser reports (`st.context.timezone`, an
IANA name such as Europe/Berlin), with daylight saving as it was on that day. A browser that names a zone
unknown here still gives its offset from UTC, so times are shown at that offset and say so ("UTC+2");
without either, they are shown in UTC and say "UTC".
"""

from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import streamlit as st

STAMP = "%d %b %H:%M"


def shown(moment: datetime) -> str:
    """`moment` in the viewer's time zone, e.g. "14 Mar 15:04"."""
    return stamp(moment, st.context.timezone, st.context.timezone_offset)


def stamp(moment: datetime, zone_name: str | None, offset_min: int | None = None) -> str:
    """`moment` (naive: UTC) in the zone named, else at the offset (minutes behind UTC, as a browser's
    getTimezoneOffset() counts them), else in UTC; a time not in the named zone says which it is in."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    zone = _zone(zone_name)
    if zone is not None:
        return moment.astimezone(zone).strftime(STAMP)
    if offset_min is None:
        return f"{moment.astimezone(timezone.utc).strftime(STAMP)} UTC"
    ahead = -offset_min
    hours, minutes = divmod(abs(ahead), 60)
    label = "UTC" if not ahead else f"UTC{'+' if ahead > 0 else '-'}{hours}" + (f":{minutes:02d}" if minutes else "")
    return f"{moment.astimezone(timezone(timedelta(minutes=ahead))).strftime(STAMP)} {label}"


def _zone(name: str | None) -> tzinfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # unknown, malformed ("../x"), or a folder ("America")
        return None
