"""Media in and out: ``decode`` (sources), ``encode`` (H.264 MP4 with audio), ``masks`` (class-id PNGs)."""
