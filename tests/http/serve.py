#!/usr/bin/env python3
"""A small HTTP/1.1 file server for the URL tests, on 127.0.0.1 (port printed on stdout).

Serves files from DIR with ETag, Last-Modified and single `bytes=N-` / `bytes=N-M` ranges
(honouring If-Range), and logs one line per request to LOG: `METHOD PATH RANGE`.
Path prefixes misbehave on purpose, for image files (not .json/.sig/.bmap):
  /drop/NAME   the first full GET sends the headers and half the body, then closes;
  /stall/NAME  never answers (the connection stays open);
usage: serve.py DIR LOG
"""
import email.utils
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT, LOG = sys.argv[1], sys.argv[2]
dropped = set()
lock = threading.Lock()


def side_file(name):
    return name.endswith((".json", ".sig", ".bmap"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.serve(head=True)

    def do_GET(self):
        self.serve(head=False)

    def serve(self, head):
        rng = self.headers.get("Range", "")
        with lock, open(LOG, "a") as log:
            log.write(f"{self.command} {self.path} {rng}\n")
        mode, name = "", self.path.lstrip("/")
        if "/" in name:
            mode, name = name.split("/", 1)
        path = os.path.join(ROOT, name)
        if mode == "stall" and not side_file(name):
            time.sleep(3600)
            return
        if not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        st = os.stat(path)
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        start, end = 0, st.st_size - 1
        partial = False
        if rng.startswith("bytes=") and self.headers.get("If-Range", etag) in (
            etag,
            email.utils.formatdate(st.st_mtime, usegmt=True),
        ):
            a, _, b = rng[6:].partition("-")
            start, end = int(a), (int(b) if b else st.st_size - 1)
            partial = True
        self.send_response(206 if partial else 200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
        self.send_header("Accept-Ranges", "bytes")
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{st.st_size}")
        self.end_headers()
        if head:
            return
        limit = end - start + 1
        if mode == "drop" and not partial and not side_file(name):
            with lock:
                first = name not in dropped
                dropped.add(name)
            if first:
                limit //= 2
        with open(path, "rb") as f:
            f.seek(start)
            while limit > 0:
                chunk = f.read(min(1 << 16, limit))
                if not chunk:
                    break
                self.wfile.write(chunk)
                limit -= len(chunk)
        if limit > 0 or (mode == "drop" and not partial and not side_file(name)):
            self.close_connection = True


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
