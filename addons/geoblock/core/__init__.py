"""The decision core: names, rules, the compiled ruleset and the pure decision. Imports nothing from mitmproxy."""
