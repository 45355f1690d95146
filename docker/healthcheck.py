"""Container healthcheck: exit 0 when the service's ``GET /ready`` answers 200, else 1.

Used by the images' HEALTHCHECK and by docker-compose.yml. It reads the same ``NEAR_*`` settings as
the service (port, API key, host), so it works with auth on and with any port:

    python /opt/near/healthcheck.py
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from near_service.core.settings import Settings


def ready_url(settings: Settings) -> str:
    """Where to ask: the bound address, or loopback when the service binds every address."""
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0") else "::1" if settings.host == "::" else settings.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/ready"


def main() -> int:
    settings = Settings()  # type: ignore[call-arg]  # fields come from the environment
    request = urllib.request.Request(ready_url(settings))
    if settings.api_key is not None:
        request.add_header("Authorization", f"Bearer {settings.api_key.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:  # 503 while the pool loads: print the progress it reports
        print(f"/ready: {exc.code} {exc.read(500).decode(errors='replace')}")
    except (urllib.error.URLError, OSError) as exc:
        print(f"/ready: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
