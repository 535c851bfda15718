"""Queues: the Cloudflare pull/ack client, message decoding and an in-memory queue."""
