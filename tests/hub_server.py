"""A stand-in for the Hugging Face hub, for the download tests: it answers the requests
huggingface_hub makes for a file (`HEAD` and `GET /{repo}/resolve/{revision}/{file}`, with ranges)
with the headers the hub sends (commit, etag, linked size), serving `ROOT/{repo}/{file}`.

    python tests/hub_server.py ROOT [--port P] [--rate BYTES_PER_S] [--corrupt] [--truncate]

prints its port on the first line, then one line per request (method, path, range). Large files
(over 1 kB) are served as LFS files are: their etag is their sha256; small ones carry git's blob
hash. --corrupt serves every file with one byte changed (the headers still describe the true
file), --truncate serves it short."""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_ABOVE = 1024


def etag(data: bytes) -> str:
    if len(data) > LFS_ABOVE:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def handler(root: Path, rate: float | None, corrupt: bool, truncate: bool):
    class Hub(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _file(self):
            repo, sep, rest = self.path.split("?")[0].lstrip("/").partition("/resolve/")
            name = rest.partition("/")[2]
            path = (root / repo / name).resolve()
            if not sep or root.resolve() not in path.parents or not path.is_file():
                return None
            return path.read_bytes()

        def _head(self, data: bytes, length: int, status: int = 200, extra=()):
            self.send_response(status)
            tag = etag(data)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{tag}"')
            if len(data) > LFS_ABOVE:
                self.send_header("X-Linked-Etag", f'"{tag}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()

        def do_HEAD(self):
            data = self._file()
            print("HEAD", self.path, flush=True)
            if data is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._head(data, len(data))

        def do_GET(self):
            data = self._file()
            wanted = self.headers.get("Range", "")
            print("GET", self.path, wanted, flush=True)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = bytearray(data)
            if corrupt:
                body[len(body) // 2] ^= 0xFF
            if truncate:
                body = body[: len(body) - 100]
            start = int(wanted.removeprefix("bytes=").split("-")[0]) if wanted.startswith("bytes=") else 0
            part = bytes(body[start:])
            if start:
                self._head(data, len(part), 206, [("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")])
            else:
                self._head(data, len(part))
            chunk = 16 * 1024
            for i in range(0, len(part), chunk):
                self.wfile.write(part[i:i + chunk])
                if rate:
                    time.sleep(chunk / rate)
    return Hub


def main():
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--rate", type=float)
    p.add_argument("--corrupt", action="store_true")
    p.add_argument("--truncate", action="store_true")
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port),
                                 handler(Path(args.root), args.rate, args.corrupt, args.truncate))
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
