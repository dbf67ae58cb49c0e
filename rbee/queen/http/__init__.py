"""The queen's HTTP surface: the front door (`front`: request id, credentials, body limit, the
inference fast lane), who is calling (`auth`, `sessions`), refusals and body parsing
(`errors`), the URL table (`routes`) and the routes by topic, the status page and the logs.
"""
