"""Live market data and account events over WebSocket (README "Live feeds")."""
