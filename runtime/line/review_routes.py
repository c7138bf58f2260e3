"""The review desk's part of the live server: its page, its reads, its writes and its metrics.

Reads: `/review` (the page), `/api/review?source=S&verdict=V&since=T&until=T&within=SECONDS` (episodes newest
first, the history, the versions; `within`: the last SECONDS by the run's clock), `/review/picture/<id>.jpg`
(the best frame's overlay), `/review/original/<id>.jpg` (its original pixels). Writes (the server's WriteGuard
has let them through; the operator's name comes from their token): `/api/review/ack`, `/api/review/label`,
`/api/version` ("use version K").
"""

from __future__ import annotations

import math
import time

from winclip.runtime.errors import WinclipError, first_line
from winclip.runtime.line import defaults
from winclip.runtime.line.review import VERDICTS, ReviewError
from winclip.runtime.line.review_page import REVIEW_PAGE

WRITES = ("/api/review/ack", "/api/review/label", "/api/version")
PICTURE, ORIGINAL = "/review/picture/", "/review/original/"


def get(handler, path: str, query: dict, send_body: bool) -> bool:
    """Answer a GET of the review desk; False when the path is not one of its own."""
    desk = handler.server.live.desk
    review = None if desk is None else desk.review
    if path in ("/review", "/review/"):
        handler._send(200, "text/html; charset=utf-8", REVIEW_PAGE.encode(), send_body)
    elif review is None:
        return False
    elif path == "/api/review":
        chosen = query.get("verdict", [None])[0]
        since, within = _number(query.get("since", [None])[0]), _number(query.get("within", [None])[0])
        if within is not None:  # "the last hour" by the run's clock: the tablet's may be off
            since = max(since or 0.0, time.time() - within)
        try:
            profile = desk.versions()  # read once: the listing's history takes its log from it
        except WinclipError as exc:  # a damaged versions.json must not cost the page its episodes
            profile = {"error": first_line(exc)}
        listing = review.listing(source=query.get("source", [None])[0] or None,
                                 verdict_is=chosen if chosen in VERDICTS else None,
                                 since=since,
                                 until=_number(query.get("until", [None])[0]),
                                 limit=defaults.REVIEW_LISTING, versions=profile)
        listing["profile"] = profile
        listing["access"] = desk.guard.counts()
        handler._json(200, listing, send_body)
    elif path.startswith((PICTURE, ORIGINAL)) and path.endswith(".jpg"):
        number = path.rsplit("/", 1)[1][:-4]
        episode = int(number) if number.isdigit() and len(number) < 12 else None
        if episode is None:
            jpeg = None
        elif path.startswith(PICTURE):
            jpeg = review.picture(episode)
        else:
            jpeg = review.original_jpeg(episode)
        if jpeg is None:
            handler._send(404, "text/plain; charset=utf-8", b"this picture is no longer kept\n", send_body)
        else:
            handler._send(200, "image/jpeg", jpeg, send_body)
    else:
        return False
    return True


def post(handler, path: str, access) -> None:
    """A review write: acknowledge, label, or use a version; the answer is JSON either way."""
    from winclip.runtime.line.operator import OperatorError

    desk = handler.server.live.desk
    try:
        _, kind, fields = handler._request()
        if kind != "json":
            raise OperatorError("send a JSON object")
        who = handler._who(access, fields)
        note = str(fields.get("why") or fields.get("note") or "")
        if path == "/api/version":
            version = _whole(fields.get("version"), "say which version: {\"version\": K}")
            job = desk.request_use(version, who=who, why=note or "chosen on the review desk")
            handler._json(202, {"job": job.to_json()}, True)
            return
        if desk.review is None:
            raise OperatorError("this run has no review desk", 404)
        episode = _whole(fields.get("episode"), "say which episode: {\"episode\": ID}")
        if path == "/api/review/ack":
            done = desk.review.acknowledge(episode, who, note)
        else:
            label = fields.get("label")
            if label not in ("good", "defect"):
                raise OperatorError("say what it is: {\"label\": \"good\"} or {\"label\": \"defect\", \"kind\": K}")
            kind_of_defect = fields.get("kind")
            done = desk.review.label(episode, who, note, good=label == "good",
                                     kind=None if label == "good" or kind_of_defect in (None, "") else str(kind_of_defect))
        handler._json(200, {"episode": done}, True)
    except (WinclipError, OSError) as exc:  # every refusal and failure is a one-line answer, never a dropped line
        handler.close_connection = True
        status = getattr(exc, "status", 500) if isinstance(exc, WinclipError) else 500
        handler._json(status, {"error": first_line(exc) if isinstance(exc, OSError) else str(exc)}, True)


def _whole(value, message: str) -> int:
    from winclip.runtime.line.operator import OperatorError

    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise OperatorError(message)
    return value


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def metrics(review: dict):
    """Reviews and labels made during the run, and episodes by verdict (the desk's summary)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield CounterMetricFamily("winclip_reviews", "Episodes acknowledged on the review desk during the run",
                              value=review["reviews"])
    labels = CounterMetricFamily("winclip_labels", "Frames labelled on the review desk during the run, by kind "
                                 "(good or the defect kind)", labels=["kind"])
    for kind, count in sorted(review["labels"].items()):
        labels.add_metric([kind], count)
    yield labels
    episodes = GaugeMetricFamily("winclip_review_episodes", "Episodes the review desk keeps, by verdict",
                                 labels=["verdict"])
    for name, count in review["episodes"].items():
        episodes.add_metric([name], count)
    yield episodes
