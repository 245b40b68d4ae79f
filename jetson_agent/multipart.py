"""A strict, small multipart/form-data reader for job uploads.

``cgi`` is deprecated (gone in Python 3.13) and ``email`` re-encodes binary parts, so the agent
splits the body itself: it only ever needs two named fields, ``spec`` (JSON) and ``model`` (the
ONNX bytes), and nothing in a part header is used as a file name.
"""

import re

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')
_NAME = re.compile(r'name="([^"]*)"')


class MultipartError(ValueError):
    pass


def boundary_of(content_type):
    match = _BOUNDARY.search(content_type or "")
    if not match:
        raise MultipartError("multipart/form-data without a boundary")
    return match.group(1).encode("latin-1")


def parse(body, boundary):
    """Return {field name: bytes}."""
    delimiter = b"--" + boundary
    if not body.startswith(delimiter):
        raise MultipartError("the body does not start with the multipart boundary")
    fields = {}
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        if not chunk.startswith(b"\r\n"):
            raise MultipartError("malformed multipart part")
        head, sep, data = chunk[2:].partition(b"\r\n\r\n")
        if not sep or not data.endswith(b"\r\n"):
            raise MultipartError("malformed multipart part")
        disposition = [
            line
            for line in head.decode("latin-1").split("\r\n")
            if line.lower().startswith("content-disposition:")
        ]
        name = _NAME.search(disposition[0]) if disposition else None
        if not name:
            raise MultipartError("multipart part without a field name")
        if name.group(1) in fields:
            raise MultipartError("multipart field %r given twice" % name.group(1)[:80])
        fields[name.group(1)] = data[:-2]
    return fields


def build(fields, boundary):
    """Encode {name: (filename or None, content type, bytes)} (used by clients)."""
    parts = []
    for name, (filename, ctype, data) in fields.items():
        disposition = 'form-data; name="%s"' % name
        if filename:
            disposition += '; filename="%s"' % filename
        parts.append(
            b"--"
            + boundary
            + b"\r\nContent-Disposition: "
            + disposition.encode("latin-1")
            + b"\r\nContent-Type: "
            + ctype.encode("latin-1")
            + b"\r\n\r\n"
            + data
            + b"\r\n"
        )
    return b"".join(parts) + b"--" + boundary + b"--\r\n"
