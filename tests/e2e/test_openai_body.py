"""modelbufd end to end: OpenAI-compatible routes find the model in the
body the way clients send it: a multipart audio upload whose binary file
part (with NUL bytes) comes before the "model" field, a quoted boundary,
and JSON with odd but valid contents. Real daemon, real workers."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import Daemon, worker  # noqa: E402


def multipart(boundary, parts):
    out = b""
    for headers, value in parts:
        out += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def test_model_found_after_a_binary_part_and_with_a_quoted_boundary():
    d = Daemon("models:\n  whisper:\n    cmd: " + worker() + "\n    aliases: [whisper-1]\n"
               "  other:\n    cmd: " + worker() + "\n")
    try:
        wav = b"RIFF\x00\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + bytes(range(256)) * 4
        body = multipart(b"b0und", [
            (b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n'
             b"Content-Type: audio/wav", wav),
            (b'Content-Disposition: form-data; name="model"', b"whisper-1"),
        ])
        st, doc, _ = d.request("POST", "/v1/audio/transcriptions", body=body,
                               headers={"Content-Type": 'multipart/form-data; boundary="b0und"'})
        assert st == 200 and doc["model"] == "whisper", doc
        # No model field at all: 400, and nothing was loaded.
        body = multipart(b"b0und", [(b'Content-Disposition: form-data; name="file"', wav)])
        st, doc, _ = d.request("POST", "/v1/audio/translations", body=body,
                               headers={"Content-Type": "multipart/form-data; boundary=b0und"})
        assert st == 400 and doc["error"]["code"] == "bad_request"
        assert d.status("other")["state"] == "unloaded"
        # JSON with escapes and nesting before the field.
        st, doc, _ = d.request("POST", "/v1/embeddings",
                               body=b'{"input": ["a\\u0000b", {"model": "x"}], "model": "other"}',
                               headers={"Content-Type": "application/json"})
        assert st == 200 and doc["model"] == "other", doc
    finally:
        assert d.stop() == 0
