"""Mart inputs that are not API feeds: cpa.moe payouts and daily snapshots of order totals."""
