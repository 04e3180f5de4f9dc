"""URL lists, masking, the round robin, TLS contexts and queue arguments: no socket opened.

Hypothesis builds URL lists and passwords of any shape; the TLS files are made by trustme (files,
not connections). The broker's own reply texts for a queue of another type are the ones
RabbitMQ 3.10 sends (seen in tests/shard_worker/amqp/test_broker_quorum.py against the real one).
"""

from __future__ import annotations

import ssl
from urllib.parse import quote, urlsplit

import pika
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from shard_worker.amqp import params as amqp_params
from shard_worker.amqp.params import (
    Endpoints,
    QueueTypeMismatch,
    TlsConfigError,
    TlsFiles,
    connection_parameters,
    declare_error,
    describe_error,
    failure_hint,
    parse_urls,
    queue_arguments,
    split_urls,
    ssl_context,
)
from shard_worker.logs import mask_url
from tests.tls_certs import make_tls_files

# -- strategies -------------------------------------------------------------------------------

hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9\-]{0,12}(\.[a-z][a-z0-9\-]{0,8}){0,2}", fullmatch=True),
    st.just("127.0.0.1"),
    st.just("[::1]"),
)
#: Letters no other part of a URL or of a message has: a password made of them (and of the
#: characters that confuse URL parsers) shows whether any piece of it leaked.
SECRET_LETTERS = "ΑΒΓΔΕΖΗΘΙΚΛΜ"
#: Unencoded passwords of any shape but the one the list syntax cannot tell apart (",x://").
raw_passwords = st.text(SECRET_LETTERS + "/?#@[]:,;=&%!$'()*+~-._", min_size=1, max_size=24).filter(
    lambda p: "://" not in p and any(ch in SECRET_LETTERS for ch in p)
)


def leaked(text: str) -> bool:
    return any(ch in SECRET_LETTERS for ch in text)


@st.composite
def urls(draw, password=None) -> tuple[str, str]:
    """``(url, password)``: a valid AMQP URL with a percent-encoded password."""
    scheme = draw(st.sampled_from(["amqp", "amqps"]))
    host = draw(hosts)
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    user = draw(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True))
    secret = password if password is not None else "PW" + draw(st.text(min_size=4, max_size=16))
    vhost = draw(st.sampled_from(["", "/", "/%2F", "/prod", "/a%2Fb"]))
    netloc = f"{user}:{quote(secret, safe='')}@{host}" + (f":{port}" if port else "")
    return f"{scheme}://{netloc}{vhost}", secret


# -- lists of URLs ----------------------------------------------------------------------------


@given(st.lists(urls(), min_size=1, max_size=5), st.sampled_from([",", ", ", " ,\t", ",,"]))
def test_a_list_of_urls_round_trips(items, separator):
    text = separator.join(url for url, _ in items) + (separator if len(items) % 2 else "")
    assert parse_urls(text) == tuple(url for url, _ in items)
    assert split_urls([url for url, _ in items]) == [url for url, _ in items]


@given(st.lists(urls(), min_size=1, max_size=4))
def test_mask_url_hides_every_password_of_a_list(items):
    masked = mask_url(",".join(url for url, _ in items))
    for url, secret in items:
        assert quote(secret, safe="") not in masked
        assert mask_url(url) in masked
    assert masked.count(":***@") == len(items)


@given(raw_passwords, st.sampled_from(["amqp://", "amqps://"]), hosts)
def test_mask_url_hides_an_unencoded_password_whatever_it_holds(secret, scheme, host):
    """'/', '?', '#', '@', '[', ',' unencoded: urlsplit would see another host, mask_url does not."""
    url = f"{scheme}user:{secret}@{host}:5672/%2F"
    for text in (url, f"amqp://other:pw-other@h/%2F,{url}", f"{url},amqp://h2/%2F"):
        masked = mask_url(text)
        assert not leaked(masked), masked
        assert "user:***@" in masked


@given(raw_passwords)
def test_a_bad_url_is_reported_without_any_piece_of_its_password(secret):
    for text in (
        f"http://u:{secret}@h/",
        f"amqp://u:{secret}@h/a/b",
        f"amqp://u:{secret}@h:99999/",
        f"amqp://u:{secret}@h/?nope=1",
        f"amqp://ok/%2F,ftp://u:{secret}@h/",
    ):
        with pytest.raises(ValueError) as error:
            parse_urls(text)
        assert not leaked(str(error.value)), str(error.value)
        assert "\n" not in str(error.value)


@given(raw_passwords)
def test_a_good_url_with_an_odd_password_is_accepted_or_refused_without_a_leak(secret):
    try:
        (url,) = parse_urls(f"amqp://u:{secret}@h:5672/%2F")
    except ValueError as error:
        assert not leaked(str(error))
    else:
        assert connection_parameters(url).credentials.password  # pika reads it


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"^no AMQP URL given$"),
        (" , ", r"^no AMQP URL given$"),
        ("http://u:pw@x/", r"^'http://u:\*\*\*@x/' is not an AMQP URL \(expected amqp:// or amqps://\)$"),
        ("amqp://", r"has no host"),
        ("amqp://h:0/", r"port 0"),
        ("amqp://h:99999/", r"is not a valid URL"),
        ("amqp://a,b/", r"bad host 'a,b' \(several URLs are separated by commas, each with its scheme"),
        ("amqp://h/a/b", r"cannot hold a '/' \(write it %2F\)"),
        ("amqp://h/?ssl_options=x", r"ssl_options in the URL is not supported; use --amqp-ca-file"),
        ("amqp://h/?heartbeat=x", r"not a usable AMQP URL: Invalid heartbeat value"),
        ("amqp://h/?nope=1", r"unknown URL parameter 'nope'"),
        ("amqp://a/,amqp://b:pw@c:1/,ftp://d/", r"^URL 3 of 3: 'ftp://d/' is not an AMQP URL"),
    ],
)
def test_bad_urls_are_one_clear_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_urls(text)


def test_passwords_are_decoded_for_the_redaction():
    assert amqp_params.passwords("amqp://a:p%40ss-word@h/%2F,amqp://b@h2/,amqps://c:second-one@h3/") == [
        "p@ss-word", "second-one",
    ]  # fmt: skip


def test_a_comma_in_a_password_needs_no_encoding():
    assert parse_urls("amqp://u:pa,ss@h/%2F,amqp://v:w@g/%2F") == ("amqp://u:pa,ss@h/%2F", "amqp://v:w@g/%2F")


# -- connection parameters --------------------------------------------------------------------


@given(urls())
def test_connection_parameters_follow_the_url(item):
    url, secret = item
    context = ssl.create_default_context()
    params = connection_parameters(url, context)
    tls = url.startswith("amqps://")
    assert params.credentials.password == secret
    assert params.port == (urlsplit(url).port or (5671 if tls else 5672))
    assert params.host == urlsplit(url).hostname
    if tls:
        assert params.ssl_options.context is context
        # the certificate must name the URL's host: check_hostname needs server_hostname
        assert params.ssl_options.server_hostname == params.host
    else:
        assert params.ssl_options is None


def test_amqps_without_tls_files_trusts_the_system_cas():
    params = Endpoints("amqps://u:p@rabbit.example/%2F").parameters()
    assert params.ssl_options.context.verify_mode == ssl.CERT_REQUIRED
    assert params.ssl_options.context.check_hostname
    assert params.ssl_options.server_hostname == "rabbit.example"


def test_a_url_pika_refuses_is_a_configuration_error_with_the_password_masked():
    with pytest.raises(amqp_params.BrokerConfigError) as error:
        Endpoints("amqp://u:hunter22@h/?heartbeat=x").parameters()
    assert "hunter22" not in str(error.value) and "u:***@h" in str(error.value)


# -- the round robin --------------------------------------------------------------------------


@given(st.integers(1, 5), st.lists(st.sampled_from(["failed", "connected", "lost"]), max_size=60))
def test_round_robin_with_backoff_only_after_a_full_round(n, events):
    endpoints = Endpoints(",".join(f"amqp://node{i}/%2F" for i in range(n)), rng=lambda: 1.0)
    index = failures = rounds = 0
    for event in events:
        assert endpoints.current == f"amqp://node{index}/%2F"
        if event == "failed":
            delay = endpoints.failed()
            index, failures = (index + 1) % n, failures + 1
            if failures < n:
                assert delay == 0.0, "the next URL at once while some were not tried"
            else:
                # a full round failed: the backoff's next delay (0, then 0.5, 1, 2... capped)
                assert delay == ([0.0] + [min(10.0, 0.5 * 2**k) for k in range(40)])[rounds]
                failures, rounds = 0, rounds + 1
        elif event == "connected":
            endpoints.connected()
            failures = rounds = 0
        else:
            endpoints.lost()
            index, failures = (index + 1) % n, 0
    assert endpoints.current == f"amqp://node{index}/%2F"


def test_one_url_behaves_as_before():
    endpoints = Endpoints("amqp://guest:guest@127.0.0.1:5672/%2F", rng=lambda: 1.0)
    assert [endpoints.failed() for _ in range(5)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    endpoints.connected()
    endpoints.lost()
    assert endpoints.current == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert endpoints.describe_next(0.5) == "retrying in 0.5 s"


def test_the_log_line_names_the_next_url_masked():
    endpoints = Endpoints("amqp://a:pw1@h1/%2F,amqp://b:pw2@h2/%2F")
    delay = endpoints.failed()
    assert endpoints.describe_next(delay) == "retrying in 0.0 s with amqp://b:***@h2/%2F"


# -- TLS files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def test_a_context_from_the_files_verifies_the_server_and_presents_the_client_certificate(tls_files):
    context = ssl_context(TlsFiles(str(tls_files.ca_file), str(tls_files.client_cert_file), str(tls_files.client_key_file)))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    cas = context.get_ca_certs()  # only our CA: a CA file replaces the system's
    assert len(cas) == 1 and ("organizationName", "spectacles test CA") in {rdn[0] for rdn in cas[0]["subject"]}


def test_a_certificate_with_its_key_in_the_same_file_needs_no_key_file(tls_files, tmp_path):
    both = tmp_path / "both.pem"
    both.write_bytes(tls_files.client_key_file.read_bytes() + tls_files.client_cert_file.read_bytes())
    assert ssl_context(TlsFiles(str(tls_files.ca_file), str(both)))


def _encrypted_key(tls_files, tmp_path):
    key = serialization.load_pem_private_key(tls_files.client_key_file.read_bytes(), None)
    path = tmp_path / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return path


@pytest.mark.parametrize(
    ("case", "setting", "message"),
    [
        ("missing ca", "amqp_ca_file", r"nope\.pem: no such file$"),
        ("empty ca", "amqp_ca_file", r"empty\.pem: not a PEM CA certificate"),
        ("key as ca", "amqp_ca_file", r"client\.key: not a PEM CA certificate"),
        ("key only", "amqp_key_file", r"^a key without a certificate: pass --amqp-cert-file too$"),
        ("no key", "amqp_cert_file", r"not a PEM certificate with its private key in the same file .*--amqp-key-file"),
        ("other key", "amqp_key_file", r"KEY_VALUES_MISMATCH"),
        ("missing key", "amqp_key_file", r"missing\.key: No such file"),
        ("missing cert", "amqp_cert_file", r"missing\.pem: No such file"),
        ("encrypted key", "amqp_key_file", r"^the private key is encrypted: use a key without a passphrase$"),
    ],
)
def test_unusable_tls_files_name_the_option_at_fault(tls_files, tmp_path, case, setting, message):
    ca, cert, key = str(tls_files.ca_file), str(tls_files.client_cert_file), str(tls_files.client_key_file)
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    other_key = tmp_path / "other.key"
    other_key.write_bytes(make_tls_files(tmp_path / "other").client_key_file.read_bytes())
    files = {
        "missing ca": TlsFiles(str(tmp_path / "nope.pem")),
        "empty ca": TlsFiles(str(empty)),
        "key as ca": TlsFiles(key),
        "key only": TlsFiles(ca, None, key),
        "no key": TlsFiles(ca, cert),
        "other key": TlsFiles(ca, cert, str(other_key)),
        "missing key": TlsFiles(ca, cert, str(tmp_path / "missing.key")),
        "missing cert": TlsFiles(ca, str(tmp_path / "missing.pem"), key),
        "encrypted key": TlsFiles(ca, cert, str(_encrypted_key(tls_files, tmp_path))),
    }[case]
    with pytest.raises(TlsConfigError, match=message) as error:
        ssl_context(files)
    assert error.value.setting == setting
    assert "\n" not in str(error.value) and "_ssl.c" not in str(error.value)


def test_a_bad_tls_file_is_a_configuration_error_at_the_first_amqps_connect(tmp_path):
    endpoints = Endpoints("amqp://plain/%2F,amqps://tls/%2F", TlsFiles(str(tmp_path / "nope.pem")))
    assert endpoints.parameters().ssl_options is None  # plain AMQP needs no TLS file
    endpoints.failed()
    with pytest.raises(amqp_params.BrokerConfigError, match="no such file"):
        endpoints.parameters()


# -- failures explained -----------------------------------------------------------------------


def test_describe_error_unwraps_what_pika_wrapped():
    from pika.adapters.utils.connection_workflow import (
        AMQPConnectionWorkflowFailed,
        AMQPConnectorSocketConnectError,
    )

    refused = ConnectionRefusedError(111, "Connection refused")
    wrapped = AMQPConnectionWorkflowFailed([AMQPConnectorSocketConnectError(refused)])
    assert describe_error(wrapped) == "ConnectionRefusedError: [Errno 111] Connection refused"
    # what on_open_error gets: the workflow's failure in an AMQPConnectionError
    outer = pika.exceptions.AMQPConnectionError(wrapped)
    assert describe_error(outer) == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert describe_error(pika.exceptions.StreamLostError("Stream connection lost: x")) == (
        "StreamLostError: Stream connection lost: x"
    )


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
         "self-signed certificate in certificate chain", "not signed by a trusted CA (--amqp-ca-file)"),
        ("SSLError(1, '[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required')",
         "wants a client certificate: pass --amqp-cert-file and --amqp-key-file"),
        ("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca", "does not trust the client certificate"),
        ("[SSL: WRONG_VERSION_NUMBER] wrong version number", "does not speak TLS"),
        ("ConnectionRefusedError: [Errno 111] Connection refused", ""),
    ],
)  # fmt: skip
def test_tls_failures_get_a_hint(text, hint):
    assert hint in failure_hint(text)
    assert bool(failure_hint(text)) == bool(hint)


# -- queue types ------------------------------------------------------------------------------


def test_queue_arguments():
    assert queue_arguments("classic") is None  # as before: existing queues stay equivalent
    assert queue_arguments("quorum") == {"x-queue-type": "quorum"}
    with pytest.raises(ValueError):
        queue_arguments("stream")


CLASSIC_EXISTS = (
    "channel closed: (406, \"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue "
    "'g:0' in vhost '/': received the value 'quorum' of type 'longstr' but current is none\")"
)
QUORUM_EXISTS = (
    "channel closed: (406, \"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue "
    "'g:0' in vhost '/': received none but current is the value 'quorum' of type 'longstr'\")"
)


def test_a_queue_of_the_other_type_is_a_clear_configuration_error():
    error = declare_error("g:0", "quorum", CLASSIC_EXISTS)
    assert isinstance(error, QueueTypeMismatch) and error.queue == "g:0"
    assert str(error).startswith("queue 'g:0' exists as a classic queue but --queue-type is quorum")
    assert "Delete the queue" in str(error) and "--queue-type classic" in str(error)
    error = declare_error("g:0", "classic", QUORUM_EXISTS)
    assert "exists as a quorum queue but --queue-type is classic" in str(error)
    assert str(error).endswith("start with --queue-type quorum")


def test_other_inequivalent_arguments_are_a_configuration_error_too():
    reason = (
        "channel closed: (406, \"PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'g:SEND' "
        "in vhost '/': received 'true' but current is 'false'\")"
    )
    error = declare_error("g:SEND", "classic", reason)
    assert isinstance(error, QueueTypeMismatch)
    assert "inequivalent arg 'durable'" in str(error) and "delete the queue" in str(error)


def test_a_lost_connection_while_declaring_is_not_a_configuration_error():
    assert declare_error("g:0", "quorum", "channel closed: (320, 'CONNECTION_FORCED - broker forced connection closure')") is None
    assert declare_error("g:0", "quorum", "channel closed: StreamLostError: Stream connection lost") is None
