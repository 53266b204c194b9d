"""Table-driven tests of the label parsers and parse_site: canonical forms in, hostile values out."""

from __future__ import annotations

import pytest
from certbot import util as certbot_util
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.core import model, values
from companion.core.container import ContainerInfo
from companion.core.model import CertRequest, Policy, Rejection, Site, parse_site
from companion.core.values import HttpsMethod, InvalidValue, Proto, RootAnswer, parse_default_root
from tests.harness.containers import container

LABEL63 = "a" * 63
HOST253 = ".".join([LABEL63, LABEL63, LABEL63, "b" * 61])
assert len(HOST253) == 253


def info(labels: dict[str, str] | None = None, env: dict[str, str] | None = None, **kw: object) -> ContainerInfo:
    kw.setdefault("networks", {"proxy": "172.18.0.2"})
    return container("web", labels=labels, env=env, **kw)


def site_of(labels: dict[str, str], **kw: object) -> Site:
    result = parse_site(info(labels), Policy(**kw))  # type: ignore[arg-type]
    assert isinstance(result, Site), result
    return result


# -- hostnames -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.com", "example.com"),
        ("EXAMPLE.Com", "example.com"),
        ("  example.com  ", "example.com"),
        ("example.com\n", "example.com"),  # surrounding whitespace is trimmed, never kept
        ("example.com.", "example.com"),  # fully qualified form
        ("*.example.com", "*.example.com"),
        ("*.Example.COM.", "*.example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.DE", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("münchen.例え.jp", "xn--mnchen-3ya.xn--r8jz45g.jp"),
        ("exаmple.com", "xn--exmple-4nf.com"),  # Cyrillic "а": a different name, never example.com
        ("ｅｘａｍｐｌｅ.com", "example.com"),
        ("\ufeffa.com", "a.com"),  # IDNA maps the BOM to nothing  # full-width letters fold to ASCII (IDNA mapping)
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("localhost", "localhost"),
        ("1.example.com", "1.example.com"),
        (LABEL63 + ".com", LABEL63 + ".com"),
        (HOST253, HOST253),
    ],
)
def test_parse_hostname_canonical(value: str, expected: str) -> None:
    assert values.parse_hostname(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "~^foo\\..*$",
        "~^(?<sub>.+)\\.example\\.com$",
        "a\n.com",  # "$" used to match before the newline: server_name a\n.com would mean "a" and ".com"
        "*.a\n.com",
        "a\r.com",
        "a\x00.com",
        "a.com;",
        "a.com; return 200",
        "a.com{",
        "a.com}",
        "a{b}.com",
        "'a.com'",
        '"a.com"',
        "$host",
        "a$b.com",
        "a#b.com",
        "a b.com",
        "a\tb.com",
        "a_b.com",
        "-a.com",
        "a-.com",
        "a..com",
        "a.com..",
        ".a.com",
        ".",
        "*",
        "*.",
        "a.*.com",
        "*.*.com",
        "**.com",
        "foo*.com",
        "a/b.com",
        "a:80",
        "1.2.3.4",
        "[::1]",
        "a" * 64 + ".com",
        "a." + HOST253,  # 255
        HOST253 + "c",  # 254
        "x" * 5000,
        "ａ；b.com",  # full-width semicolon folds to ";"
        "a\u2028.com",
        "a\u202e.com",
        "a%2e.com",
    ],
)
def test_parse_hostname_rejects(value: str) -> None:
    with pytest.raises(InvalidValue):
        values.parse_hostname(value)


def test_parse_hostname_wildcard_forbidden_for_certificates() -> None:
    with pytest.raises(InvalidValue, match="wildcard"):
        values.parse_hostname("*.example.com", wildcard=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a.com", ("a.com",)),
        ("a.com,b.com", ("a.com", "b.com")),
        (" a.com , B.com ,", ("a.com", "b.com")),
        ("b.com,a.com,B.COM,a.com.", ("b.com", "a.com")),
        ("a.com,,b.com", ("a.com", "b.com")),
    ],
)
def test_parse_host_list(value: str, expected: tuple[str, ...]) -> None:
    assert values.parse_host_list(value) == expected


@pytest.mark.parametrize("value", ["", ",", " , ", "a.com,b c.com", "a.com;b.com", "a.com b.com", "a.com\nb.com"])
def test_parse_host_list_rejects(value: str) -> None:
    with pytest.raises(InvalidValue):
        values.parse_host_list(value)


# -- ports, paths, enums, HSTS, names ---------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("80", 80), ("1", 1), ("65535", 65535), (" 8080 ", 8080), ("080", 80)])
def test_parse_port(value: str, expected: int) -> None:
    assert values.parse_port(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "65536",
        "99999",
        "123456",
        "-1",
        "+80",
        "80;",
        "80 81",
        "8 0",
        "８０",
        "٨٠",
        "0x50",
        "1e3",
        "80.0",
        "",
        "\n",
    ],
)
def test_parse_port_rejects(value: str) -> None:
    with pytest.raises(InvalidValue):
        values.parse_port(value)


@pytest.mark.parametrize(
    "value",
    ["/", "/api", "/api/", "/a/b/c", "/a.b_c~d-e", "/%7Bescaped%7D", "/v1.0/", "/" + "a" * 511],
)
def test_parse_path_accepts(value: str) -> None:
    assert values.parse_path(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "api",
        "~^/api",
        "~* \\.php$",
        "= /exact",
        "/a{b",
        "/a}b",
        "/a;b",
        "/a b",
        "/a\tb",
        "/a\nb",
        "/a\rb",
        "/a\x00",
        "/a'b",
        '/a"b',
        "/a$b",
        "/a#b",
        "/a?b",
        "/a\\b",
        "/../etc",
        "/a/../b",
        "/a/..",
        "/a/./b",
        "/.",
        "//",
        "/a//b",
        "/%2",
        "/%zz",
        "/ä",
        "/" + "a" * 512,
    ],
)
def test_parse_path_rejects(value: str) -> None:
    with pytest.raises(InvalidValue):
        values.parse_path(value)


@pytest.mark.parametrize(
    ("value", "enum", "expected"),
    [
        ("http", Proto, Proto.HTTP),
        ("HTTPS", Proto, Proto.HTTPS),
        (" Https ", Proto, Proto.HTTPS),
        ("redirect", HttpsMethod, HttpsMethod.REDIRECT),
        ("NoRedirect", HttpsMethod, HttpsMethod.NOREDIRECT),
        ("NOHTTP", HttpsMethod, HttpsMethod.NOHTTP),
        ("nohttps", HttpsMethod, HttpsMethod.NOHTTPS),
    ],
)
def test_parse_enum(value: str, enum: type, expected: object) -> None:
    assert values.parse_enum(value, enum) is expected


@pytest.mark.parametrize(
    ("value", "enum"),
    [
        ("uwsgi", Proto),
        ("grpc", Proto),
        ("http;", Proto),
        ("http\nhttps", Proto),
        ("ｈｔｔｐ", Proto),
        ("", Proto),
        ("redirect;", HttpsMethod),
        ("no redirect", HttpsMethod),
        ("true", HttpsMethod),
    ],
)
def test_parse_enum_rejects(value: str, enum: type) -> None:
    with pytest.raises(InvalidValue, match="must be one of"):
        values.parse_enum(value, enum)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("off", ""),
        ("OFF", ""),
        ("max-age=31536000", "max-age=31536000"),
        ("max-age=0", "max-age=0"),
        ("max-age=63072000; includeSubDomains", "max-age=63072000; includeSubDomains"),
        ("max-age=63072000;includeSubDomains", "max-age=63072000;includeSubDomains"),
        ("max-age=63072000; includeSubDomains; preload", "max-age=63072000; includeSubDomains; preload"),
        ("max-age=63072000; preload", "max-age=63072000; preload"),
        (" max-age=1 ", "max-age=1"),
    ],
)
def test_parse_hsts(value: str, expected: str) -> None:
    assert values.parse_hsts(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "on",
        "",
        "max-age=",
        "max-age=abc",
        "max-age=1234567890",
        "max-age=1; includesubdomains",
        "max-age=1; preload; includeSubDomains",
        'max-age=1" always; add_header X "y',
        "max-age=1;\nadd_header X y",
        "max-age=1\n; preload",
        "max-age=1; preload\x00",
        "max-age=1 $x",
        "max-age=1}",
        "max-age=1 # c",
    ],
)
def test_parse_hsts_rejects(value: str) -> None:
    with pytest.raises(InvalidValue):
        values.parse_hsts(value)


@pytest.mark.parametrize("value", ["example.com", "my-cert", "Shared_Cert.2", "a", "a" * 128])
def test_parse_cert_name(value: str) -> None:
    assert values.parse_cert_name(value) == value


@pytest.mark.parametrize(
    "value", ["", "../etc", "a/b", "..", "a..b", ".hidden", "-x", "a b", "a;b", "a\nb", "a{b", "*.x", "a" * 129]
)
def test_parse_cert_name_rejects(value: str) -> None:
    with pytest.raises(InvalidValue):
        values.parse_cert_name(value)


@pytest.mark.parametrize(
    "value",
    [
        "admin@example.com",
        "a.b+tag@mail.example.org",
        " ops@x.io ",
        "1st@x.io",
        "a-b_c%d@sub-1.example.co.uk",
        "x@" + ".".join([LABEL63, LABEL63, LABEL63, "b" * 57]),  # domain of 249 characters
        "a" * 64 + "@x.io",
    ],
)
def test_parse_email(value: str) -> None:
    assert values.parse_email(value) == value.strip()


@pytest.mark.parametrize(
    "value",
    [
        "",
        "admin",
        "@x.io",
        "a@",
        "a b@x.io",
        "a@x.io;",
        "a@x\n.io",
        "<a@x.io>",
        "a@x.io,b@x.io",
        "ä@x.io",
        "-x@example.com",  # certbot reads "--email -x@example.com" as an option: no certificate ever
        "--help@example.com",
        "-@x.io",
        ".a@x.io",
        "_a@x.io",
        "+a@x.io",
        "a..b@x.io",
        "a@localhost",  # certbot, like the CA, wants a dotted domain
        "a@-x.io",
        "a@x-.io",
        "a@x..io",
        "a@.x.io",
        "a@x.io.",
        "a@x_y.io",
        "a@1.2.3.4",
        "a@x.123",
        "a@" + "b" * 64 + ".io",
        "a" * 65 + "@x.io",
        "x@" + ".".join([LABEL63, LABEL63, LABEL63, "b" * 62]),  # domain of 254 characters
        "a@x.io\x1b[31m",
    ],
)
def test_parse_email_rejects(value: str) -> None:
    with pytest.raises(InvalidValue):
        values.parse_email(value)


def test_email_starting_with_a_dash_is_refused_by_name() -> None:
    result = parse_site(
        info({"VIRTUAL_HOST": "a.com", "LETSENCRYPT_HOST": "a.com", "LETSENCRYPT_EMAIL": "-x@example.com"})
    )
    assert isinstance(result, Rejection), result
    assert result.message == (
        "container web: LETSENCRYPT_EMAIL='-x@example.com' rejected: "
        "must not start with - (certbot would read it as an option, so no certificate)"
    )
    other = parse_site(info({"VIRTUAL_HOST": "a.com", "LETSENCRYPT_HOST": "a.com", "LETSENCRYPT_EMAIL": "a..b@x.io"}))
    assert isinstance(other, Rejection) and other.variable == "LETSENCRYPT_EMAIL"
    assert other.reason == values.EMAIL_RULE and "starts with a letter or digit" in other.message


@settings(max_examples=400, deadline=None, database=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.text(alphabet="aZ09._%+-@\n\x1b ", max_size=40),
        st.builds(
            "{}@{}".format,
            st.text(alphabet="aZ09._%+-", min_size=1, max_size=12),
            st.text(alphabet="aZ09.-", min_size=1, max_size=20),
        ),
    )
)
def test_every_accepted_email_is_one_certbot_takes_as_the_email(value: str) -> None:
    """What parse_email returns is certbot's own idea of an email and never looks like an option."""
    try:
        email = values.parse_email(value)
    except InvalidValue:
        return
    assert email[0].isascii() and email[0].isalnum(), email
    assert certbot_util.safe_email(email), email
    local, domain = email.split("@")
    assert len(local) <= 64 and len(domain) <= 253
    assert all(label and not label.startswith("-") and not label.endswith("-") for label in domain.split("."))
    assert not any(ch.isspace() or not ch.isprintable() for ch in email)


@pytest.mark.parametrize(
    ("host", "patterns", "allowed"),
    [
        ("a.example.com", (), True),
        ("a.example.com", ("*.example.com",), True),
        ("example.com", ("*.example.com",), False),
        ("evil.com", ("*.example.com", "example.com"), False),
        ("example.com", ("*.example.com", "example.com"), True),
    ],
)
def test_domain_allowed(host: str, patterns: tuple[str, ...], allowed: bool) -> None:
    assert values.domain_allowed(host, patterns) is allowed


# -- parse_site --------------------------------------------------------------------------------------


def test_parse_site_defaults() -> None:
    site = site_of({"VIRTUAL_HOST": "App.Example.com"})
    assert site == Site(
        container="web",
        hosts=("app.example.com",),
        port=80,
        proto=Proto.HTTP,
        path="/",
        dest="",
        https_method=HttpsMethod.REDIRECT,
        hsts=model.DEFAULT_HSTS,
        cert_name="",
        cert=None,
    )


def test_parse_site_all_values() -> None:
    site = site_of(
        {
            "VIRTUAL_HOST": "a.example.com, B.example.com",
            "VIRTUAL_PORT": "8443",
            "VIRTUAL_PROTO": "HTTPS",
            "VIRTUAL_PATH": "/api/",
            "VIRTUAL_DEST": "/",
            "HTTPS_METHOD": "NoHttp",
            "HSTS": "max-age=600; includeSubDomains",
            "CERT_NAME": "shared",
            "LETSENCRYPT_HOST": "b.example.com",
            "LETSENCRYPT_EMAIL": "me@example.com",
        }
    )
    assert site.hosts == ("a.example.com", "b.example.com")
    assert (site.port, site.proto, site.path, site.dest) == (8443, Proto.HTTPS, "/api/", "/")
    assert (site.https_method, site.hsts, site.cert_name) == (
        HttpsMethod.NOHTTP,
        "max-age=600; includeSubDomains",
        "shared",
    )
    assert site.cert == CertRequest(name="shared", domains=("b.example.com",), email="me@example.com")


def test_parse_site_nothing_asked() -> None:
    assert parse_site(info({"com.example.other": "x"}, {"PATH": "/usr/bin"})) is None


def test_parse_site_labels_win_over_env() -> None:
    result = parse_site(
        info(
            labels={"VIRTUAL_HOST": "label.example.com", "VIRTUAL_PORT": "3000"},
            env={"VIRTUAL_HOST": "env.example.com", "VIRTUAL_PORT": "1", "VIRTUAL_PATH": "/env"},
        )
    )
    assert isinstance(result, Site)
    assert (result.hosts, result.port, result.path) == (("label.example.com",), 3000, "/env")


def test_parse_site_env_only() -> None:
    result = parse_site(info(env={"VIRTUAL_HOST": "env.example.com", "LETSENCRYPT_HOST": "env.example.com"}))
    assert isinstance(result, Site)
    assert result.cert is not None and result.cert.domains == ("env.example.com",)


@pytest.mark.parametrize(
    ("exposed", "port"),
    [((), 80), (("3000/tcp",), 3000), (("3000/tcp", "8080/tcp"), 80), (("81",), 81), (("53/udp", "8080/tcp"), 8080)],
)
def test_parse_site_default_port_from_exposed(exposed: tuple[str, ...], port: int) -> None:
    result = parse_site(info({"VIRTUAL_HOST": "a.com"}, exposed_ports=exposed))
    assert isinstance(result, Site) and result.port == port


def test_parse_site_empty_port_uses_default() -> None:
    assert site_of({"VIRTUAL_HOST": "a.com", "VIRTUAL_PORT": ""}).port == 80


@pytest.mark.parametrize(
    ("labels", "default_email", "cert"),
    [
        ({"LETSENCRYPT_HOST": "a.com"}, "", CertRequest("a.com", ("a.com",), "")),
        ({"LETSENCRYPT_HOST": "a.com"}, "ops@x.io", CertRequest("a.com", ("a.com",), "ops@x.io")),
        (
            {"LETSENCRYPT_HOST": "b.com,A.com", "LETSENCRYPT_EMAIL": "me@x.io"},
            "ops@x.io",
            CertRequest("b.com", ("b.com", "a.com"), "me@x.io"),
        ),
        ({"LETSENCRYPT_HOST": "a.com", "CERT_NAME": "mine"}, "", CertRequest("mine", ("a.com",), "")),
        ({"LETSENCRYPT_HOST": "bücher.de"}, "", CertRequest("xn--bcher-kva.de", ("xn--bcher-kva.de",), "")),
        ({"LETSENCRYPT_HOST": "a.com."}, "", CertRequest("a.com", ("a.com",), "")),
        ({}, "ops@x.io", None),
    ],
)
def test_parse_site_certificate_request(labels: dict[str, str], default_email: str, cert: CertRequest | None) -> None:
    site = site_of({"VIRTUAL_HOST": "a.com,b.com,bücher.de", **labels}, default_email=default_email)
    assert site.cert == cert


def test_parse_site_cert_name_alone_asks_no_certificate() -> None:
    site = site_of({"VIRTUAL_HOST": "a.com", "CERT_NAME": "shared"})
    assert site.cert is None and site.cert_name == "shared"


def test_parse_site_letsencrypt_host_without_virtual_host() -> None:
    result = parse_site(info({"LETSENCRYPT_HOST": "a.com"}))
    assert isinstance(result, Rejection)
    assert result.variable == "LETSENCRYPT_HOST" and "VIRTUAL_HOST" in result.message


def test_parse_site_allowed_domains() -> None:
    policy = Policy(allowed_domains=("*.example.com",))
    assert isinstance(parse_site(info({"VIRTUAL_HOST": "a.example.com"}), policy), Site)
    result = parse_site(info({"VIRTUAL_HOST": "a.example.com,evil.org"}), policy)
    assert isinstance(result, Rejection)
    assert result.variable == "VIRTUAL_HOST" and "evil.org" in result.message


# Hostile values, one variable at a time, on top of an otherwise valid container.
BASE = {"VIRTUAL_HOST": "a.example.com,b.example.com", "LETSENCRYPT_HOST": "a.example.com"}
HOSTILE: list[tuple[str, str]] = [
    *(
        ("VIRTUAL_HOST", v)
        for v in [
            "~^foo\\..*$",
            "a.com\nb.com",
            "a\n.com",
            "a.com;",
            "a.com; include /etc/passwd",
            "a.com {",
            "a.com}",
            "'a.com'",
            '"a.com"',
            "$host",
            "a.com#",
            "a b.com",
            "a\tb.com",
            "a\x00.com",
            "a\r.com",
            "a" * 64 + ".com",
            "a." + HOST253,
            "x" * 10000,
            "ａ；b.com",
            "a.com,~^b",
            ",",
        ]
    ),
    *(("VIRTUAL_PORT", v) for v in ["0", "65536", "80;", "８０", "\n80\n81", "8\n0", "-1", "http", "8O"]),
    *(("VIRTUAL_PROTO", v) for v in ["uwsgi", "http;", "ht\ntp", "https://", "h ttp", "$scheme", "http{"]),
    *(
        ("VIRTUAL_PATH", v)
        for v in [
            "/{",
            "/a}",
            "/a;b",
            "/a b",
            "/a\nb",
            "/../etc",
            "/a/../b",
            "~^/api",
            "api",
            "/$uri",
            "/a#b",
            '/a"',
            "/a\x00",
            "/" + "a" * 600,
            "/.well-known/acme-challenge/",  # would duplicate the ACME location and break nginx -t for everyone
            "/.well-known/acme-challenge/x",
        ]
    ),
    *(
        ("VIRTUAL_DEST", v)
        for v in ["/a b", "/a;b", "/{", "/../x", "http://evil", "/a\nb", "/$request_uri", "dest", "/a'", "/a#"]
    ),
    *(("HTTPS_METHOD", v) for v in ["always", "redirect;", "redirect\nnohttp", "no redirect", "{", "$x"]),
    *(("HSTS", v) for v in ["on", 'max-age=1"', "max-age=1; preload\nx", "max-age=1;\nx", "max-age=1 }", "max-age=-1"]),
    *(("CERT_NAME", v) for v in ["../../etc", "a/b", "a b", "a;b", "a\nb", "..", "$x", "a{", "x" * 200, "ä"]),
    *(
        ("LETSENCRYPT_HOST", v)
        for v in [
            "*.example.com",
            "c.example.com",
            "a.example.com,evil.org",
            "a.example.com;",
            "a\n.example.com",
            "~^a",
            "a example.com",
        ]
    ),
    *(("LETSENCRYPT_EMAIL", v) for v in ["me", "a b@x.io", "a@x;.io", "a@x\n.io", "<a@x.io>", "a@x.io\x00", "é@x.io"]),
]


@pytest.mark.parametrize(("variable", "value"), HOSTILE, ids=[f"{v}-{i}" for i, (v, _) in enumerate(HOSTILE)])
@pytest.mark.parametrize("source", ["labels", "env"])
def test_parse_site_rejects_hostile_value(variable: str, value: str, source: str) -> None:
    values = {**BASE, variable: value}
    container = info(labels=values) if source == "labels" else info(env=values)
    result = parse_site(container)
    assert isinstance(result, Rejection), result
    assert result.container == "web"
    assert result.variable == variable
    message = result.message
    assert message.startswith("container web: ")
    assert f"{variable}=" in message
    assert "\n" not in message and "\r" not in message and "\x00" not in message
    assert len(message) < 400


@pytest.mark.parametrize("space", [" ", "\n", "\t", "\r\n"])
def test_parse_site_trims_surrounding_whitespace(space: str) -> None:
    labels = {
        "VIRTUAL_HOST": "a.com",
        "VIRTUAL_PORT": "81",
        "VIRTUAL_PROTO": "https",
        "VIRTUAL_PATH": "/p",
        "VIRTUAL_DEST": "/d",
        "HTTPS_METHOD": "nohttp",
        "HSTS": "max-age=1; preload",
        "CERT_NAME": "c",
        "LETSENCRYPT_HOST": "a.com",
        "LETSENCRYPT_EMAIL": "m@x.io",
    }
    site = site_of({k: space + v + space for k, v in labels.items()})
    assert (site.hosts, site.port, site.proto, site.path, site.dest) == (("a.com",), 81, Proto.HTTPS, "/p", "/d")
    assert (site.https_method, site.hsts, site.cert_name) == (HttpsMethod.NOHTTP, "max-age=1; preload", "c")
    assert site.cert == CertRequest("c", ("a.com",), "m@x.io")


def test_rejection_message_escapes_and_truncates() -> None:
    rejection = Rejection("web", "VIRTUAL_HOST", "a\nb" + "x" * 200, "bad")
    assert rejection.message.startswith("container web: VIRTUAL_HOST='a\\\\nb")
    assert "..." in rejection.message and rejection.message.endswith("rejected: bad")


def test_settings_of_only_companion_variables() -> None:
    values = model.settings_of(
        info(labels={"VIRTUAL_HOST": "l", "OTHER": "x"}, env={"VIRTUAL_HOST": "e", "HSTS": "off"})
    )
    assert values == {"VIRTUAL_HOST": "l", "HSTS": "off"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("404", RootAnswer(404)),
        (" 418 ", RootAnswer(418)),
        ("100", RootAnswer(100)),
        ("599", RootAnswer(599)),
        ("301", RootAnswer(301)),  # nginx takes `return 301;` as a bare status
        ("none", None),
        ("NONE", None),
        ("301 https://example.org/docs/", RootAnswer(301, "https://example.org/docs/")),
        ("302 $scheme://$host/app1$request_uri", RootAnswer(302, "$scheme://$host/app1$request_uri")),
        ("307 /app/?a=1&b=%2F", RootAnswer(307, "/app/?a=1&b=%2F")),
        ("308 http://user@h.example:8080/x,y+z", RootAnswer(308, "http://user@h.example:8080/x,y+z")),
    ],
)
def test_parse_default_root(value: str, expected: RootAnswer | None) -> None:
    assert parse_default_root(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "99",
        "600",
        "4040",
        "abc",
        "404 /x",  # a target needs a redirect code
        "200 hello",
        "301 https://",
        "301 example.org",
        "301 /x;return 200",
        "301 /x }",
        "301 /x\ny",
        "301 /x\r\nSet-Cookie:a",
        '301 "/x"',
        "301 /x#frag",
        "301 /$uri",  # decoded: %0d%0a would split the Location header
        "301 /$hostx",
        "301 /$http_x",
        "301 /%zz",
        "301 /" + "a" * 2048,
        "301 /x\\y",
        "301 /ü",
    ],
)
def test_parse_default_root_rejects(value: str) -> None:
    with pytest.raises(InvalidValue):
        parse_default_root(value)


def test_root_answer_renders_as_return_arguments() -> None:
    assert str(RootAnswer(404)) == "404"
    assert str(RootAnswer(301, "/a/")) == "301 /a/"
