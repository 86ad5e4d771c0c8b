"""The mitmproxy adapter: the only package that imports mitmproxy (hooks, layers, enforcement)."""
