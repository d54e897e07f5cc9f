"""An independent Arrow Flight client: plans a source on the extractor and
reads every split with pyarrow.flight. Prints a JSON summary.

usage: flight_client.py EXTRACTOR_URL SOURCE
"""
import json
import sys

import pyarrow.flight as flight


def encode_extract_command(source: str) -> bytes:
    """quarry.v1.ExtractCommand with only field 1 (source) set, protobuf-encoded."""
    data = source.encode()
    length, varint = len(data), bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x0a" + bytes(varint) + data


def main() -> None:
    url, source = sys.argv[1], sys.argv[2]
    client = flight.FlightClient(url.replace("http://", "grpc+tcp://"))
    info = client.get_flight_info(flight.FlightDescriptor.for_command(encode_extract_command(source)))
    rows, first, columns = 0, None, None
    for endpoint in info.endpoints:
        table = client.do_get(endpoint.ticket).read_all()
        rows += table.num_rows
        columns = table.schema.names
        if first is None and table.num_rows:
            first = {k: v[0] for k, v in table.slice(0, 1).to_pydict().items()}
    print(json.dumps({"endpoints": len(info.endpoints), "rows": rows, "columns": columns, "first": first}))


if __name__ == "__main__":
    main()
