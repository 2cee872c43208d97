"""The web console: a page, its script and its styles, served under ``/tripwire/ui/``.

Static files written in this repository and shipped in the package; nothing is fetched from
elsewhere at run time. The page reads and acts through the admin API with the viewer's token,
so the console adds no authority of its own: with no token it shows nothing.
"""

from proxy.console.app import build_console_app

__all__ = ["build_console_app"]
