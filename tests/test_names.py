import ipaddress

import pytest

from geoblock.core.names import EmbeddedIPv4, InvalidHost, as_written, carried_ipv4, normalize_host, normalize_ip, unicode_name


@pytest.mark.parametrize("raw, expected", [
    ("binance.com", "binance.com"),
    ("BINANCE.Com", "binance.com"),
    ("binance.com.", "binance.com"),
    ("binance.com:443", "binance.com"),
    ("API.Binance.COM.:8443", "api.binance.com"),
    ("Bücher.example", "xn--bcher-kva.example"),
    ("BÜCHER.EXAMPLE.", "xn--bcher-kva.example"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("bücher。example", "xn--bcher-kva.example"),  # ideographic full stop is a dot in UTS 46
    ("_dmarc.example.com", "_dmarc.example.com"),
    ("1.2.3.4.example", "1.2.3.4.example"),
])
def test_names_normalise_to_one_spelling(raw, expected):
    assert normalize_host(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("127.0.0.2", "127.0.0.2"),
    ("127.0.0.2:443", "127.0.0.2"),
    ("[::1]", "::1"),
    ("[::1]:443", "::1"),
    ("::1", "::1"),
    ("[2001:DB8::1]:8080", "2001:db8::1"),
    ("::ffff:127.0.0.2", "127.0.0.2"),
    ("[::ffff:203.0.113.9]:443", "203.0.113.9"),
    ("fe80::1%eth0", "fe80::1"),
])
def test_ip_literals_become_addresses(raw, expected):
    value = normalize_host(raw)
    assert isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address))
    assert str(value) == expected


@pytest.mark.parametrize("raw, why", [
    ("", "empty"),
    (".", "empty"),
    ("a..b", "empty label"),
    ("-bad.example", "starts or ends with '-'"),
    ("bad host.example", "characters not allowed"),
    ("a" * 64 + ".example", "longer than 63"),
    (("a" * 60 + ".") * 5 + "com", "longer than 253"),
    ("[::1", "unclosed"),
    ("host:port", "port is not a number"),
    ("nul\x00.example", "characters not allowed"),
])
def test_invalid_hosts_are_refused_with_the_value(raw, why):
    with pytest.raises(InvalidHost) as err:
        normalize_host(raw)
    assert why in str(err.value)
    assert repr(raw)[:40] in str(err.value) or len(repr(raw)) > 80


def test_ipv4_mapped_ipv6_is_ipv4():
    assert normalize_ip("::ffff:10.1.2.3") == ipaddress.IPv4Address("10.1.2.3")


# IPv6 addresses that carry an IPv4 address a translator or tunnel reaches: (as written, IPv6, form).
# Each carries 127.0.0.5 (the test database's blocked network).
CARRIED = [
    ("64:ff9b::7f00:5", "64:ff9b::7f00:5", "nat64"),                      # RFC 6052 well-known prefix
    ("64:ff9b::127.0.0.5", "64:ff9b::7f00:5", "nat64"),
    ("[64:FF9B::7F00:5]:443", "64:ff9b::7f00:5", "nat64"),
    ("64:ff9b:1::7f00:5", "64:ff9b:1::7f00:5", "nat64-local"),            # RFC 8215, /96 format
    ("64:ff9b:1:abcd:0:1:7f00:5", "64:ff9b:1:abcd:0:1:7f00:5", "nat64-local"),
    ("2002:7f00:5::", "2002:7f00:5::", "6to4"),                          # RFC 3056: bits 16-47
    ("2002:7f00:5:1::99", "2002:7f00:5:1::99", "6to4"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffa", "2001:0:4136:e378:8000:63bf:80ff:fffa", "teredo"),  # RFC 4380
    ("::7f00:5", "::7f00:5", "ipv4-compatible"),                         # RFC 4291 2.5.5.1
    ("[::127.0.0.5]", "::7f00:5", "ipv4-compatible"),
    ("::127.0.0.5%lo", "::7f00:5", "ipv4-compatible"),
    ("::ffff:0:7f00:5", "::ffff:0:7f00:5", "ipv4-translated"),           # RFC 7915 (SIIT)
    ("[::ffff:0:127.0.0.5]", "::ffff:0:7f00:5", "ipv4-translated"),
]


@pytest.mark.parametrize("raw, ipv6, form", CARRIED, ids=[c[0] for c in CARRIED])
def test_an_ipv6_address_that_carries_ipv4_is_judged_as_the_ipv4_address(raw, ipv6, form):
    value = normalize_host(raw)
    assert isinstance(value, EmbeddedIPv4)
    assert value == ipaddress.IPv4Address("127.0.0.5") and hash(value) == hash(ipaddress.IPv4Address("127.0.0.5"))
    assert str(value) == "127.0.0.5" and value.version == 4
    assert (str(value.ipv6), value.form) == (ipv6, form)
    assert as_written(value) == ipaddress.IPv6Address(ipv6)  # what a connection to it really uses
    assert normalize_ip(str(value.ipv6)) == value and normalize_ip(value.ipv6) == value


def test_teredo_yields_the_clients_address_not_the_teredo_servers():
    addr = ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:80ff:fffa")
    server, client = addr.teredo
    assert carried_ipv4(addr) == (client, "teredo") and server == ipaddress.IPv4Address("65.54.227.120")


@pytest.mark.parametrize("raw", ["::", "::1", "2001:db8::1", "fe80::1", "2003::7f00:5", "64:ff9b:2::7f00:5",
                                 "fe80::5efe:7f00:5", "64:ff9a::7f00:5", "fc00::7f00:5"])
def test_other_ipv6_addresses_carry_nothing(raw):
    value = normalize_ip(raw)
    assert not isinstance(value, EmbeddedIPv4) and value.version == 6


def test_an_embedded_address_survives_copying_and_plain_ipv4_is_untouched():
    import copy
    import pickle

    value = normalize_ip("2002:7f00:5::1")
    for again in (pickle.loads(pickle.dumps(value)), copy.deepcopy(value)):
        assert isinstance(again, EmbeddedIPv4) and (again, again.ipv6, again.form) == (value, value.ipv6, "6to4")
    plain = normalize_ip("127.0.0.5")
    assert type(plain) is ipaddress.IPv4Address and as_written(plain) is plain
    assert normalize_ip(value) is value


def test_unicode_name_is_for_people():
    assert unicode_name("xn--bcher-kva.example") == "bücher.example"
    assert unicode_name("binance.com") == "binance.com"


@pytest.mark.parametrize("raw, expected", [
    ("2130706437", "127.0.0.5"),        # decimal
    ("0x7f000005", "127.0.0.5"),        # hexadecimal
    ("0X7F000005:80", "127.0.0.5"),
    ("0177.0.0.5", "127.0.0.5"),        # octal parts
    ("0x7f.0.0.05", "127.0.0.5"),       # mixed
    ("127.5", "127.0.0.5"),             # shortened
    ("127.0.5", "127.0.0.5"),
])
def test_legacy_ipv4_forms_are_the_address_the_system_would_dial(raw, expected):
    # inet_aton (and so getaddrinfo) reads these as IPv4: treating them as names would let a client
    # reach a blocked address under a name no rule lists.
    value = normalize_host(raw)
    assert isinstance(value, ipaddress.IPv4Address) and str(value) == expected


@pytest.mark.parametrize("raw", ["0x7g.example", "1.2.3.4.5", "cafe", "abc.def", "12345.example", "08.example"])
def test_names_that_only_look_numeric_stay_names(raw):
    assert isinstance(normalize_host(raw), str)


@pytest.mark.parametrize("raw, expected", [
    ("１２７．０．０．５", "127.0.0.5"),   # fullwidth digits and dots
    ("¹²⁷.⁰.⁰.⁵", "127.0.0.5"),           # superscript digits
    ("１２７。０。０。５。", "127.0.0.5"),  # ideographic full stops, trailing dot
])
def test_unicode_spellings_of_an_address_are_that_address(raw, expected):
    value = normalize_host(raw)
    assert isinstance(value, ipaddress.IPv4Address) and str(value) == expected


def test_an_error_names_the_value_as_given_with_its_spaces():
    with pytest.raises(InvalidHost) as info:
        normalize_host(":; ")
    assert info.value.value == ":; "
