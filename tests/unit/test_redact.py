import json

from testbed.archive.redact import MARK, redact, redact_data


def test_private_keys_vaults_passwords_and_url_credentials():
    text = """password: hunter2
ansible_become_password: "p w"
url: https://bob:s3cret@mirror.example/x
key: |
  -----BEGIN OPENSSH PRIVATE KEY-----
  b3BlbnNzaC1rZXktdjEAAAAA
  -----END OPENSSH PRIVATE KEY-----
secret_value: !vault |
  $ANSIBLE_VAULT;1.1;AES256
  61343039
  39623232
name: keep-me
"""
    out = redact(text)
    for secret in ("hunter2", "p w", "s3cret", "b3BlbnNzaC1rZXktdjEAAAAA", "61343039"):
        assert secret not in out
    assert "name: keep-me" in out and "bob:" in out and out.count(MARK) >= 5


def test_json_is_redacted_structurally():
    data = {"api_token": "zzz", "nested": {"password": 123, "ok": "fine"}, "list": ["password=abc"]}
    out = redact_data(json.loads(json.dumps(data)))
    assert out["api_token"] == MARK and out["nested"]["password"] == MARK and out["nested"]["ok"] == "fine"
    assert out["list"] == [f"password={MARK}"]


def test_mptcp_tokens_are_identifiers_not_secrets():
    ss = "tcp-ulp-mptcp flags:Mmec token:59efa120 seq:1"
    assert redact(ss) == ss
    assert redact_data({"mptcp_info": {"token": 1234}}) == {"mptcp_info": {"token": 1234}}


def test_ordinary_text_is_untouched():
    text = "MPTcpExtMPJoinSynAckRx 1\ntopology: {file: dual-homed.yaml.j2}\nkey: value\n"
    assert redact(text) == text
