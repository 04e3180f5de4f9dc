"""Discord's REST API: GET /gateway/bot and its ratelimits."""
