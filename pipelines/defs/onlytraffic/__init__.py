"""OnlyTraffic: CPC and CPL orders (Marketer API), swap orders (Studio API)."""
