#!/usr/bin/env python3
"""The batch crawl's peer: the same URL list through Scrapy, with an item
pipeline that decodes each image with Pillow, makes a 64-pixel thumbnail
(JPEG) and hashes the bytes — what `trawler crawl` does, minus the detector
and the Parquet output (which only add to Scrapy's cost).

The simulator's hosts are virtual (`h17.images.test`): each request goes to
the simulator's address with the URL's host in the Host header. Scrapy's
per-domain limit therefore sees one domain; it is set as high as the global
one, and the duplicate filter (Scrapy's own) drops repeated URLs.

    target/peers-venv/bin/python scripts/peers/batch_scrapy.py urls.txt.gz --sim 127.0.0.1:3100 --limit 20000
"""

import argparse
import gzip
import hashlib
import io
import resource
import sys
import time
from urllib.parse import urlsplit

import scrapy
from PIL import Image
from scrapy.crawler import CrawlerProcess

COUNTS = {"lines": 0, "items": 0, "not_image": 0, "bad": 0}


class ThumbnailPipeline:
    def process_item(self, item):
        try:
            img = Image.open(io.BytesIO(item["body"]))
            img.load()
            img = img.convert("RGB")
            img.thumbnail((64, 64))
            out = io.BytesIO()
            img.save(out, "JPEG", quality=75)
            item["thumbnail"] = out.getvalue()
            item["sha1"] = hashlib.sha1(item["body"]).hexdigest()
            item["width"], item["height"] = img.size
            del item["body"]
            COUNTS["items"] += 1
        except Exception:
            COUNTS["not_image"] += 1
        return None


class ListSpider(scrapy.Spider):
    name = "batch"

    def __init__(self, path, sim, limit, **kw):
        super().__init__(**kw)
        self.path, self.sim, self.limit = path, sim, limit

    async def start(self):
        for request in self.requests():
            yield request

    def requests(self):
        opener = gzip.open if self.path.endswith(".gz") else open
        with opener(self.path, "rt") as f:
            for n, line in enumerate(f):
                if self.limit and n >= self.limit:
                    break
                url = line.strip()
                COUNTS["lines"] += 1
                parts = urlsplit(url)
                if parts.scheme != "http" or not parts.hostname:
                    COUNTS["bad"] += 1
                    continue
                try:
                    parts.port
                except ValueError:
                    COUNTS["bad"] += 1
                    continue
                target = f"http://{self.sim}{parts.path}"
                yield scrapy.Request(
                    target,
                    headers={"Host": parts.netloc},
                    callback=self.parse,
                    errback=self.failed,
                    meta={"url": url},
                    # Scrapy's duplicate filter works on the request it
                    # sends; the Host header makes it per original URL.
                    dont_filter=False,
                )

    def parse(self, response):
        yield {"url": response.meta["url"], "body": response.body}

    def failed(self, failure):
        pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--sim", required=True, help="host:port of trawler sim images")
    p.add_argument("--limit", type=int, default=0, help="first N lines only")
    p.add_argument("--concurrency", type=int, default=64)
    a = p.parse_args()
    process = CrawlerProcess(
        settings={
            "LOG_LEVEL": "ERROR",
            "CONCURRENT_REQUESTS": a.concurrency,
            "CONCURRENT_REQUESTS_PER_DOMAIN": a.concurrency,
            "ROBOTSTXT_OBEY": False,
            "RETRY_TIMES": 2,
            "REDIRECT_MAX_TIMES": 5,
            "DOWNLOAD_MAXSIZE": 4 << 20,
            "DOWNLOAD_TIMEOUT": 10,
            "COOKIES_ENABLED": False,
            "TELNETCONSOLE_ENABLED": False,
            "ITEM_PIPELINES": {"__main__.ThumbnailPipeline": 100},
        }
    )
    started = time.monotonic()
    process.crawl(ListSpider, path=a.file, sim=a.sim, limit=a.limit)
    process.start()
    seconds = time.monotonic() - started
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime
    lines = COUNTS["lines"]
    print(
        f"scrapy: urls={lines} items={COUNTS['items']} not_image={COUNTS['not_image']} "
        f"seconds={seconds:.3f} urls_per_s={lines / seconds:.0f} cpu_ms_per_url={cpu * 1000 / max(lines, 1):.3f} "
        f"peak_rss_mb={ru.ru_maxrss / 1024:.0f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
