"""The workbench's security properties, through the real app on a real Redis and database.

Roles on every route (walked from the routers, so a new route without a known role fails
here), CSRF on forms and on the login form, escaping of hostile alert data, session cookie
flags, login failures and their rate limit, session expiry, security headers, no secrets in
logs, no open redirect after sign-in.
"""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import select

from tests.workbench.bench import Bench, password
from workbench import auth
from workbench.models import RANK, ApiToken, AuditRow, User, WebSession, utcnow
from workbench.web import api, routes_audit, routes_auth, routes_cases, routes_dashboard
from workbench.web.deps import COOKIE, PRE_COOKIE

MODULES = (routes_auth, routes_dashboard, routes_cases, routes_audit, api)
USER_OF = {"viewer": "vera", "reviewer": "rita", "approver": "abe", "admin": "ada"}
XSS = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'

# The role each route needs, read off the code (None: public). Checked against the routes'
# dependencies below, so this table and the code cannot drift apart unnoticed.
REQUIRED = {
    ("GET", "/login"): None, ("POST", "/login"): None, ("POST", "/logout"): None,
    ("GET", "/"): "viewer", ("GET", "/dashboard/figures"): "viewer", ("GET", "/dashboard/health"): "viewer",
    ("GET", "/dashboard/live"): "viewer",
    ("GET", "/cases"): "viewer", ("GET", "/cases/{case_id}"): "viewer",
    ("POST", "/cases/{case_id}/claim"): "reviewer", ("POST", "/cases/{case_id}/release"): "reviewer",
    ("POST", "/cases/{case_id}/assign"): "approver",
    ("POST", "/cases/{case_id}/alerts/{event_id}/dispose"): "reviewer",
    ("POST", "/cases/{case_id}/dispose"): "reviewer", ("POST", "/cases/{case_id}/approve"): "approver",
    ("POST", "/cases/{case_id}/reject"): "approver", ("POST", "/cases/{case_id}/notes"): "reviewer",
    ("POST", "/cases/{case_id}/suppress"): "approver", ("POST", "/cases/{case_id}/rating"): "reviewer",
    ("GET", "/cases/{case_id}/sar.{fmt}"): "reviewer", ("GET", "/audit"): "approver",
    ("GET", "/api/v1/cases"): "viewer", ("GET", "/api/v1/cases/{case_id}"): "viewer",
    ("POST", "/api/v1/cases/{case_id}/claim"): "reviewer", ("POST", "/api/v1/cases/{case_id}/release"): "reviewer",
    ("POST", "/api/v1/cases/{case_id}/assign"): "approver", ("POST", "/api/v1/cases/{case_id}/dispose"): "reviewer",
    ("POST", "/api/v1/cases/{case_id}/approve"): "approver", ("POST", "/api/v1/cases/{case_id}/reject"): "approver",
    ("POST", "/api/v1/cases/{case_id}/notes"): "reviewer", ("GET", "/api/v1/ratings/{account_id}"): "viewer",
    ("POST", "/api/v1/ratings/{account_id}"): "reviewer", ("GET", "/api/v1/stats"): "viewer",
}


def _roles_in_code(route) -> set[str]:
    """The roles named by the route's auth dependencies (page_user, api_user, stream_user;
    csrf_checked wraps page_user)."""
    found: set[str] = set()

    def walk(dependant) -> None:
        for d in dependant.dependencies:
            call = d.call
            owner = getattr(call, "__qualname__", "").split(".")[0]
            if owner in ("page_user", "api_user", "stream_user"):
                cells = dict(zip(call.__code__.co_freevars, (c.cell_contents for c in call.__closure__)))
                found.add(cells["role"])
            walk(d)
    walk(route.dependant)
    return found


def _routes() -> list[tuple[str, str, object]]:
    return [(m, r.path, r) for module in MODULES for r in module.router.routes for m in sorted(r.methods)]


def _is_login_redirect(r, path: str | None = None) -> bool:
    loc = r.headers.get("location", "")
    return r.status_code == 303 and loc.startswith("/login") and (path is None or loc.startswith(f"/login?next={path}"))


def _case(wb: Bench, account: str = "acct-1", n: int = 2, **event_fields):
    alerts = [wb.alert(account, **event_fields) for _ in range(n)]
    wb.commit(alerts)
    wb.build()
    return wb.case_of(account), alerts


# -- roles --------------------------------------------------------------------------------------

def test_the_role_table_matches_the_code():
    routes = _routes()
    assert {(m, p) for m, p, _ in routes} == set(REQUIRED), "a route without an expected role (or one gone)"
    for m, p, route in routes:
        roles = _roles_in_code(route)
        expected = REQUIRED[(m, p)]
        assert roles == ({expected} if expected else set()), (m, p, roles)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_route_refuses_the_anonymous_and_roles_below_its_own(wb):
    cid, alerts = _case(wb)
    fill = {"case_id": str(cid), "event_id": alerts[0].event_id, "account_id": "acct-1", "fmt": "md"}
    anon = wb.client()
    browsers = {name: wb.browser(name) for name in ("vera", "rita", "abe", "ada")}
    csrf = {name: wb.page_csrf(b) for name, b in browsers.items()}
    before = wb.snapshot(cid)
    checked = 0

    for method, path, _ in _routes():
        role = REQUIRED[(method, path)]
        url = path.format(**fill)
        if role is None:
            continue
        below = [USER_OF[r] for r in USER_OF if RANK[r] < RANK[role]]
        if path.startswith("/api/"):
            for headers in ({}, {"Authorization": "Bearer txw_not-a-token"}, {"Authorization": "Basic dmVyYTp4"},
                            {"Authorization": wb.token("vera")}):
                r = anon.request(method, url, headers=headers, json={})
                assert r.status_code == 401, (method, url, headers, r.status_code)
                assert r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
            # a signed-in browser's cookie is not an API credential (so the API needs no CSRF token)
            r = browsers["ada"].request(method, url, json={})
            assert r.status_code == 401, (method, url, "cookie", r.status_code)
            for name in below:
                r = anon.request(method, url, headers=wb.api(name), json={})
                assert r.status_code == 403, (method, url, name, r.status_code, r.text)
                assert f"needs the {role} role" in r.json()["detail"]
        else:
            data = {"csrf": "x"} if method == "POST" else None
            r = anon.request(method, url, data=data)
            assert _is_login_redirect(r, url), (method, url, r.status_code, r.headers.get("location"))
            assert not r.headers.get("location", "").endswith("expired=1")
            for name in below:
                data = {"csrf": csrf[name]} if method == "POST" else None
                r = browsers[name].request(method, url, data=data)
                assert r.status_code == 403, (method, url, name, r.status_code)
                assert f"needs the {role} role" in r.text and r.headers["content-type"].startswith("text/html")
        checked += 1
    assert checked == sum(1 for v in REQUIRED.values() if v)
    assert wb.snapshot(cid) == before, "a refused request changed the case"

    # the public routes: the login form, and a logout that needs nothing to be signed in
    assert anon.get("/login").status_code == 200
    assert anon.post("/logout").headers["location"] == "/login"

    # at its own role every route lets the caller in (whatever the action then says)
    wb.app.state.closing.set()  # the live stream ends after its first line
    for method, path, _ in _routes():
        role = REQUIRED[(method, path)]
        if role is None:
            continue
        url = path.format(**fill)
        name = USER_OF[role]
        if path.startswith("/api/"):
            r = anon.request(method, url, headers=wb.api(name), json={})
        else:
            r = browsers[name].request(method, url, data={"csrf": csrf[name]} if method == "POST" else None)
        assert r.status_code not in (401, 403, 404) and not _is_login_redirect(r), (method, url, r.status_code, r.text)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_revoked_tokens_and_disabled_users_are_refused(wb):
    c = wb.client()
    token = wb.token("rita")
    assert c.get("/api/v1/cases", headers=wb.api("rita")).status_code == 200
    with wb.db.transaction() as s:
        # only the token's sha256 is stored
        assert s.execute(select(ApiToken).where(ApiToken.token_sha256 == token)).scalar() is None
        s.execute(select(ApiToken)).scalar().revoked_at = utcnow()
    assert c.get("/api/v1/cases", headers=wb.api("rita")).status_code == 401

    token = wb.token("rick")
    browser = wb.browser("rick")
    assert browser.get("/cases").status_code == 200
    with wb.db.transaction() as s:
        s.get(User, wb.users["rick"]).active = False
    assert c.get("/api/v1/cases", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert _is_login_redirect(browser.get("/cases"))
    r = wb.login(wb.client(), "rick")
    assert r.status_code == 401 and "Wrong user name or password" in r.text


# -- CSRF ---------------------------------------------------------------------------------------

def test_forms_need_the_sessions_csrf_token(wb):
    cid, _ = _case(wb)
    rita, rick = wb.browser("rita"), wb.browser("rick")
    good, ricks = wb.page_csrf(rita, f"/cases/{cid}"), wb.page_csrf(rick)
    assert good != ricks
    before = wb.snapshot(cid)
    for data in ({}, {"csrf": ""}, {"csrf": "wrong"}, {"csrf": ricks}, {"csrf": good[:-1]}):
        r = rita.post(f"/cases/{cid}/claim", data=data)
        assert r.status_code == 403, (data, r.status_code)
        assert "CSRF" in r.text
        r = rita.post(f"/cases/{cid}/notes", data={**data, "body": "sneaky"})
        assert r.status_code == 403
        assert wb.snapshot(cid) == before
    # a logout without the token is refused: the session and its cookie stay (another site
    # cannot sign a reviewer out)
    cookie = rita.cookies.get(COOKIE)
    r = rita.post("/logout", data={"csrf": "wrong"})
    assert r.status_code == 403 and "CSRF" in r.text
    assert rita.cookies.get(COOKIE) == cookie
    assert rita.get("/cases").status_code == 200
    # with it, the form works
    r = rita.post(f"/cases/{cid}/claim", data={"csrf": good})
    assert r.status_code == 303 and r.headers["location"] == f"/cases/{cid}?done=claimed"
    assert wb.snapshot(cid)["case"]["assignee"] == "rita"
    # and logging out ends the session for good (the old cookie is dead)
    cookie = rita.cookies.get(COOKIE)
    assert rita.post("/logout", data={"csrf": good}).headers["location"] == "/login"
    replay = wb.client()
    replay.cookies.set(COOKIE, cookie)
    assert _is_login_redirect(replay.get("/cases"))


def test_login_form_needs_its_precookie_and_token(wb):
    wb.user("rita")
    sessions = wb.count(WebSession)

    def attempt(client, token):
        return client.post("/login", data={"username": "rita", "password": password("rita"), "csrf": token,
                                           "next": "/"})

    # no pre-login cookie at all
    c = wb.client()
    token = wb.csrf(c.get("/login").text)
    c.cookies.clear()
    r = attempt(c, token)
    assert r.status_code == 403 and "expired" in r.text
    assert COOKIE not in r.cookies
    # the cookie, but no token or a wrong one, or the token of another browser's form
    for tok in ("", "wrong", wb.csrf(wb.client().get("/login").text)):
        c = wb.client()
        c.get("/login")
        r = attempt(c, tok)
        assert r.status_code == 403 and COOKIE not in r.cookies, tok
    assert wb.count(WebSession) == sessions
    assert "login" not in wb.audit_actions()
    # the form as served works, and the pre-login cookie is spent
    c = wb.client()
    r = attempt(c, wb.csrf(c.get("/login").text))
    assert r.status_code == 303 and r.cookies.get(COOKIE)
    assert "Max-Age=0" in _set_cookie(r, PRE_COOKIE)


# -- escaping -----------------------------------------------------------------------------------

def _escaped(text: str) -> None:
    assert "&lt;script&gt;" in text
    assert "<script>alert(1)" not in text
    assert "<img src=x" not in text


def test_hostile_alert_data_is_escaped(wb):
    account = f"acct{XSS}{IMG}"
    cid, alerts = _case(wb, account, device_id=XSS, counterparty=IMG, asset=XSS, ip=IMG, country=XSS)
    c = wb.client()
    r = c.post(f"/api/v1/cases/{cid}/notes", headers=wb.api("rita"), json={"note": f"{XSS} {IMG}"})
    assert r.status_code == 200
    # the API gives the data back as it is, as JSON
    r = c.get(f"/api/v1/cases/{cid}", headers=wb.api("rita"))
    assert r.headers["content-type"] == "application/json"
    assert r.json()["alerts"][0]["event"]["device_id"] == XSS and r.json()["case"]["account_id"] == account

    b = wb.browser("abe")
    for path, params in ((f"/cases/{cid}", None), ("/cases", None), ("/cases", {"account": account}),
                         ("/cases", {"account": XSS, "reason": IMG}), ("/audit", {"actor": XSS})):
        r = b.get(path, params=params)
        assert r.status_code == 200, (path, r.text)
        _escaped(r.text)
    page = b.get(f"/cases/{cid}").text
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # device id, asset, country, the note
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page or "&quot;&gt;&lt;img" in page
    # error pages and the login form echo what they were given, escaped
    r = b.get(f"/cases/{cid}/sar.{IMG}")
    assert r.status_code == 404
    assert "&lt;img src=x" in r.text and "<img src=x" not in r.text
    c = wb.client()
    r = wb.login(c, XSS + IMG, "whatever-password")
    assert r.status_code == 401
    _escaped(r.text)
    # the SAR package is a download, not a page
    r = wb.browser("rita").get(f"/cases/{cid}/sar.md")
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment")


# -- cookies and sessions -----------------------------------------------------------------------

def _set_cookie(r, name: str) -> str:
    cookies = [v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith(f"{name}=")]
    assert len(cookies) == 1, r.headers
    return cookies[0]


def test_session_cookie_flags(wb):
    c = wb.client()
    pre = _set_cookie(c.get("/login"), PRE_COOKIE)
    assert "HttpOnly" in pre and "SameSite=strict" in pre and "Secure" not in pre
    r = wb.login(c, "rita")
    assert r.status_code == 303
    cookie = _set_cookie(r, COOKIE)
    parts = [p.strip() for p in cookie.split(";")]
    assert "HttpOnly" in parts and "SameSite=lax" in parts and "Path=/" in parts
    assert "Secure" not in parts
    value = parts[0].split("=", 1)[1]
    assert len(value) >= 40
    with wb.db.sessions() as s:
        assert s.get(WebSession, value) is None and s.get(WebSession, auth.sha256(value)) is not None

    https = wb.client(base_url="https://testserver")
    assert "Secure" in _set_cookie(https.get("/login"), PRE_COOKIE)
    r = wb.login(https, "rick")
    assert r.status_code == 303
    assert "Secure" in [p.strip() for p in _set_cookie(r, COOKIE).split(";")]
    assert https.get("/cases").status_code == 200

    # a cookie planted before sign-in is not adopted (no session fixation)
    c = wb.client()
    c.cookies.set(COOKIE, "planted-by-someone-else")
    r = wb.login(c, "rita")
    assert "planted-by-someone-else" not in _set_cookie(r, COOKIE)


def test_every_database_session_commits_before_the_response_is_sent():
    """A handler's writes are committed before its response leaves (the dependency's scope is
    "function"): a browser acts on a redirect at once, and must find what the POST wrote."""
    from workbench.web.deps import db_session

    def scopes(dependant) -> list[str | None]:
        found = []
        for d in dependant.dependencies:
            if d.call is db_session:
                found.append(d.scope)
            found += scopes(d)
        return found

    for m, p, route in _routes():
        assert set(scopes(route.dependant)) <= {"function"}, (m, p, scopes(route.dependant))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_session_row_is_committed_when_the_sign_in_redirect_starts(wb):
    """The race the end-to-end test hit: the 303 after sign-in went out before the session's
    row was committed, and the browser's next page sent it back to the login page."""
    seen: list[int] = []

    async def watching(scope, receive, send):
        async def watch(message):
            if message["type"] == "http.response.start" and scope["method"] == "POST":
                with wb.db.sessions() as s:
                    seen.append(s.query(WebSession).count())
            await send(message)
        await wb.app(scope, receive, watch)

    c = wb.client(watching)
    r = wb.login(c, "rita")
    assert r.status_code == 303
    assert seen == [1]
    assert c.get("/cases").status_code == 200


def test_session_expires_after_idle_ttl(make_bench):
    wb = make_bench(ui_session_ttl_s=1.0)
    b = wb.browser("rita")
    assert b.get("/cases").status_code == 200
    time.sleep(1.3)
    r = b.get("/cases")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/cases&expired=1"
    assert "Your session ended" in b.get(r.headers["location"]).text
    r = b.post("/cases/1/claim", data={"csrf": "x"})
    assert _is_login_redirect(r)


# -- login failures -----------------------------------------------------------------------------

def test_wrong_password_rate_limit_and_disabled_user(make_bench):
    wb = make_bench(login_attempts=3)
    wb.user("rita"), wb.user("rick"), wb.user("amy")
    c = wb.client()
    r = wb.login(c, "rita", "not-her-password")
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    assert COOKIE not in r.cookies
    with wb.db.sessions() as s:
        row = s.execute(select(AuditRow).where(AuditRow.action == "login_failed")).scalar()
        assert (row.actor, row.object_id, row.address) == ("rita", "rita", "testclient")
    # an unknown user gets the very same answer
    r = wb.login(c, "nobody-at-all", "whatever-password")
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    for _ in range(2):
        assert wb.login(c, "rita", "still-not-it").status_code == 401
    # three failures: now even the right password waits
    r = wb.login(c, "rita")
    assert r.status_code == 429 and "Too many failed attempts" in r.text
    assert COOKIE not in r.cookies
    assert "login_blocked" in wb.audit_actions()
    assert wb.audit_actions(AuditRow.action == "login_failed").count("login_failed") == 4
    # another user from the same address is not blocked; a success clears the count
    for _ in range(2):
        assert wb.login(c, "rick", "wrong-wrong-wrong").status_code == 401
    assert wb.login(c, "rick").status_code == 303
    for _ in range(2):
        assert wb.login(wb.client(), "rick", "wrong-wrong-wrong").status_code == 401
    assert wb.login(wb.client(), "rick").status_code == 303

    # a disabled user cannot sign in, and their open session ends
    amy = wb.browser("amy")
    with wb.db.transaction() as s:
        s.get(User, wb.users["amy"]).active = False
    r = wb.login(wb.client(), "amy")
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    assert _is_login_redirect(amy.get("/cases"))


# -- headers, logs, redirects -------------------------------------------------------------------

def test_security_headers_on_every_kind_of_response(wb):
    cid, _ = _case(wb)
    anon = wb.client()
    b = wb.browser("vera")
    responses = {
        "login page": anon.get("/login"), "redirect": anon.get("/cases"), "api 401": anon.get("/api/v1/cases"),
        "static": anon.get("/static/app.js"), "page": b.get(f"/cases/{cid}"), "page 404": b.get("/cases/999999"),
        "page 403": b.get("/audit"), "api": anon.get("/api/v1/cases", headers=wb.api("vera")),
        "api 404": anon.get("/api/v1/cases/999999", headers=wb.api("vera")),
        "login 401": wb.login(anon, "vera", "x" * 12),
    }
    for what, r in responses.items():
        h = r.headers
        assert h.get("x-content-type-options") == "nosniff", what
        assert h.get("x-frame-options") == "DENY", what
        csp = h.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp, what
        assert h.get("referrer-policy") == "same-origin", what


def test_no_secret_in_logs(wb, caplog):
    caplog.set_level(logging.DEBUG)
    cid, _ = _case(wb)
    pw, token = password("rita"), wb.token("rita")
    c = wb.client()
    wb.login(c, "rita", "rita-typo-password")
    assert wb.login(c, "rita").status_code == 303
    cookie = c.cookies.get(COOKIE)
    assert c.get(f"/cases/{cid}").status_code == 200
    api = wb.client()
    assert api.get("/api/v1/cases", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert api.post(f"/api/v1/cases/{cid}/claim", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert api.post(f"/api/v1/cases/{cid}/assign", headers={"Authorization": f"Bearer {token}"},
                    json={"username": "rita"}).status_code == 403
    assert api.get("/api/v1/cases", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    assert caplog.records, "nothing was logged: the capture is not working"
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    for secret in (pw, "rita-typo-password", token, token[4:], cookie):
        assert secret not in logged
    with wb.db.sessions() as s:
        trail = " ".join(f"{r.object_id} {r.before} {r.after}" for r in s.execute(select(AuditRow)).scalars())
    for secret in (pw, "rita-typo-password", token, cookie):
        assert secret not in trail


@pytest.mark.parametrize("target, landing", [
    ("//evil.example", "/"), ("//evil.example/cases", "/"), ("https://evil.example", "/"),
    ("/\\evil.example", "/"), ("\\\\evil.example", "/"), ("evil.example", "/"), ("", "/"),
    ("/cases?sort=age", "/cases?sort=age"), ("/cases/1", "/cases/1"),
])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # nothing here depends on the database
def test_no_open_redirect_after_login(wb, target, landing):
    c = wb.client()
    r = wb.login(c, "rita", next_url=target)
    assert r.status_code == 303 and r.headers["location"] == landing
    form = c.get("/login", params={"next": target}).text
    assert f'name="next" value="{landing.replace("&", "&amp;")}"' in form
