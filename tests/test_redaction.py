"""Credentials are masked where they appear as credentials, and nowhere else.

A credential field's value (``secret=...``, ``"token": "..."``, ``-o k=v``
text, a credential environment variable's assignment), a URL's password, a
signed query string, and a known credential value standing as a whole token
(8 characters or more; 4 or more in a backend's own error text). Never a
substring of normal output: the emulator secret ``test`` leaves ``latest``,
``test-data`` and ``token_count`` alone.
"""

from __future__ import annotations

import traceback

import numpy as np
import pytest

import cloudckpt
from cloudckpt.storage import RetryPolicy, open_storage
from cloudckpt.storage.redact import BARE_MIN, field_kind, redact_text, secrets_of
from cloudckpt.tools import cli


@pytest.mark.parametrize(
    "text, secrets, want",
    [
        # normal output with a short known secret: untouched
        ("3 committed checkpoints in s3://bkt/run; latest: s3://bkt/run/ckpt-5", ["test"], None),
        ("s3://bkt/test-data/ckpt-1 testing attest contest test_run", ["test"], None),
        ('{"key": "ckpt-7", "token_count": 12, "tokens": 5, "max_keys": 3}', ["test"], None),
        ("model/token_embedding/w  <f4  (10,)", ["test"], None),
        # credential fields, in every spelling
        ("-o secret=test", [], "-o secret=***"),
        ("{'key': 'AKID', 'secret': 'test'}", ["AKID", "test"], "{'key': '***', 'secret': '***'}"),
        ('{"password": "hunter2", "db_password": 42}', [], '{"password": "***", "db_password": ***}'),
        ("AWS_SECRET_ACCESS_KEY=test AWS_SESSION_TOKEN=abc", [], "AWS_SECRET_ACCESS_KEY=*** AWS_SESSION_TOKEN=***"),
        ("S3FileSystem(key='AKID', secret='x y')", ["AKID"], "S3FileSystem(key='***', secret='***')"),
        ("token: ya29.a0AfH6SM", [], "token: ***"),
        ("Authorization: Bearer ya29.xyz, next", [], "Authorization: ***, next"),
        # a bare `key` is an object key unless its value is a known credential
        ('{"key": "ckpt-1/data-e1-00aa"}', ["AKIDEXAMPLE"], None),
        ("key=AKIDEXAMPLE", ["AKIDEXAMPLE"], "key=***"),
        # URL userinfo and signed query strings
        ("s3://AKID:s3cr3t@bucket/run ftp://bob@host/x", [], "s3://AKID:***@bucket/run ftp://***@host/x"),
        (
            "GET https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F2024%2Fus&X-Amz-Signature=9f3a&X-Amz-Date=1",
            [],
            "GET https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Date=1",
        ),
        ("https://acct.blob.core.windows.net/c/b?sv=2021&sig=abc%3D&se=x", [], "https://acct.blob.core.windows.net/c/b?sv=2021&sig=***&se=x"),
        ("url=https://h/o?access_token=abc&alt=json", [], "url=https://h/o?access_token=***&alt=json"),
        # Azure: a connection string's key and SAS, a SAS token, a Shared Key signature, options by name
        (
            "bad connection string 'DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5PQ==;EndpointSuffix=core.windows.net'",
            [],
            "bad connection string 'DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=***;EndpointSuffix=core.windows.net'",
        ),
        ("BlobEndpoint=https://a.blob.core.windows.net;SharedAccessSignature=sv=2024&sig=c2ln", [],
         "BlobEndpoint=https://a.blob.core.windows.net;SharedAccessSignature=***&sig=***"),
        ("Authorization: SharedKey devstoreaccount1:c2lnbmF0dXJl", [], "Authorization: ***"),
        ("{'account_key': 'a2V5', 'sas_token': 'sv=1&sig=x', 'client_secret': 'cs', 'account_name': 'acct'}", [],
         "{'account_key': '***', 'sas_token': '***', 'client_secret': '***', 'account_name': 'acct'}"),
        ("https://storage.googleapis.com/b/o?key=AIzaSyA&alt=json", [], "https://storage.googleapis.com/b/o?key=***&alt=json"),
        # a known credential of 8+ characters standing alone, even at the end of a sentence
        ("AccessDenied for S3CR3T-value.", ["S3CR3T-value"], "AccessDenied for ***."),
        ("said S3CR3T-valueX and xS3CR3T-value", ["S3CR3T-value"], None),
    ],
)
def test_redact_text(text, secrets, want):
    assert redact_text(text, secrets, bare_min=BARE_MIN) == (text if want is None else want)


def test_short_secrets_stand_alone_only_in_a_backends_error_text():
    text = "bad signature for secret test (bucket latest-test)"
    assert redact_text(text, ["test"], bare_min=BARE_MIN) == text  # the command's own output
    assert redact_text(text, ["test"]) == "bad signature for secret *** (bucket latest-test)"  # a backend's text


def test_field_kinds():
    strong = ["secret", "token", "password", "AWS_SECRET_ACCESS_KEY", "aws_access_key_id", "AccessKeyId",
              "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "sig", "client_secret",
              "account_key", "connection_string", "AZURE_STORAGE_SAS_TOKEN", "private_key", "refresh_token",
              "AccountKey", "SharedAccessSignature", "sas_token", "credential", "AZURE_STORAGE_CLIENT_SECRET",
              "AZURE_STORAGE_CONNECTION_STRING"]  # fmt: skip
    assert {n: field_kind(n) for n in strong} == {n: "strong" for n in strong}
    assert field_kind("key") == "weak"
    for plain in ("latest", "tokens", "token_count", "sort_key", "session", "key_id", "endpoint_url", "anon",
                  "account_name", "AccountName", "BlobEndpoint"):
        assert field_kind(plain) is None, plain


def test_secrets_of_options_and_environment():
    options = {
        "key": "AKID",
        "secret": "s3cr3t",
        "anon": False,
        "endpoint_url": "http://127.0.0.1:9000",
        "client_kwargs": {"aws_session_token": "tok-123", "region_name": "eu-west-1"},
        "token": "anon",  # a gcsfs mode, not a secret
    }
    assert secrets_of(options, {"AWS_SECRET_ACCESS_KEY": "test", "HOME": "/root"}) == ["tok-123", "s3cr3t", "AKID", "test"]


def test_azure_credentials_are_known_secrets_even_inside_a_connection_string():
    key = "a2V5LWZvci10ZXN0cw=="  # an account key stands alone in some SDK messages
    conn = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"
    sas = "sv=2024-01-01&ss=b&sig=c2lnbmF0dXJlLXZhbHVl"
    options = {"connection_string": conn, "sas_token": sas, "client_secret": "cl1ent-s3cret",
               "credential": {"account_name": "acct2", "account_key": "b3RoZXIta2V5"}, "account_name": "acct"}
    secrets = secrets_of(options, {"AZURE_STORAGE_CONNECTION_STRING": "AccountName=x;AccountKey=ZW52LWtleQ==",
                                   "AZURE_STORAGE_CLIENT_SECRET": "env-cl1ent-s3cret"})
    for value in (conn, key, sas, "c2lnbmF0dXJlLXZhbHVl", "cl1ent-s3cret", "b3RoZXIta2V5", "ZW52LWtleQ==",
                  "env-cl1ent-s3cret"):
        assert value in secrets, value
    assert "acct" not in secrets and "core.windows.net" not in secrets
    said = f"Invalid key {key} for acct; sig c2lnbmF0dXJlLXZhbHVl rejected; env key ZW52LWtleQ==."
    assert redact_text(said, secrets) == "Invalid key *** for acct; sig *** rejected; env key ***."


def test_azure_errors_quote_no_credential():
    """A real adlfs filesystem against a closed port on 127.0.0.1, and one
    given a malformed connection string: the errors name the URL, never the key."""
    key = "S3CR3T-" + "k" * 20 + "=="
    port = 1  # nothing listens there
    conn = f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={key};BlobEndpoint=http://127.0.0.1:{port}/acct;"
    storage = open_storage("az://container/run", {"connection_string": conn}, retry=RetryPolicy(attempts=1))
    with pytest.raises(cloudckpt.StorageError) as unreachable:
        storage.read("k")
    with pytest.raises(ValueError) as malformed:
        open_storage("az://container/run", {"connection_string": f"AccountKey={key};not a pair"})
    for info in (unreachable, malformed):
        text = str(info.value) + "".join(traceback.format_exception(info.value))
        assert key not in text and "S3CR3T" not in text, text
    assert "az://container/run/k" in str(unreachable.value)


def test_cli_redact_leaves_normal_output_alone(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    cli.reset_command()
    try:
        cli.storage_options_for("s3://b/run", ["secret=test", "key=test"])
        line = "3 committed checkpoints in s3://b/test/run; latest: s3://b/test/run/ckpt-5"
        assert cli.redact(line) == line
        assert cli.redact("retrying with secret=test, key=test as testing-key-id") == (
            "retrying with secret=***, key=*** as ***"
        )
    finally:
        cli.reset_command()


def test_storage_errors_mask_a_short_secret_only_where_it_is_one(tmp_path):
    """The storage layer quotes a backend's error text: ``secret=test`` is
    masked in it, and so is a bare ``test`` there, but not ``latest``."""
    storage = open_storage(str(tmp_path / "run"), {"secret": "test"}, retry=RetryPolicy(attempts=1))
    storage.write("k", b"v")

    def leak(op, url):
        raise OSError(f"signature mismatch for secret=test (secret test), latest {url}")

    storage.add_hook(leak)
    with pytest.raises(cloudckpt.StorageError) as info:
        storage.read("k")
    message = str(info.value)
    assert "secret=*** (secret ***), latest" in message and storage.url_for("k") in message
    text = "".join(traceback.format_exception(info.value))
    assert "secret=test" not in text and "secret test" not in text  # the cause is not chained


def test_a_cause_without_credentials_is_still_chained(tmp_path):
    storage = open_storage(str(tmp_path / "run"), {"secret": "test"}, retry=RetryPolicy(attempts=1))
    storage.write("k", b"v")

    def fail(op, url):
        raise OSError("the latest attempt failed")

    storage.add_hook(fail)
    with pytest.raises(cloudckpt.StorageError) as info:
        storage.read("k")
    assert isinstance(info.value.__cause__, OSError) and "the latest attempt failed" in str(info.value)


def test_manifest_holds_no_credential(tmp_path):
    url = cloudckpt.save(str(tmp_path / "c"), {"w": np.ones(2)}, storage_options={"secret": "S3CR3T-manifest"})
    assert b"S3CR3T-manifest" not in (tmp_path / "c" / "manifest.json").read_bytes()
    assert cloudckpt.load(url)["w"].tolist() == [1.0, 1.0]
