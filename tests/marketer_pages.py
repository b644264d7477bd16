"""What the Marketer API serves for a walk of one status list, for the CPC and CPL tests' counts."""


def served_in_a_full_walk(orders: int, limit: int = 50) -> int:
    """Records the API serves for a full walk of a list of ``orders`` at page size ``limit``: each
    page after the first is read ahead from the previous page's last order (one order overlap,
    pipelines/sources/read_ahead.py), so every page read ahead that is not empty serves one more."""
    if orders < limit:
        return orders
    read_ahead = -(-(orders - (limit - 1)) // (limit - 1))  # pages from offsets 49, 98, ... below orders
    return orders + read_ahead
