"""Drives the client proxy with the official openai SDK, unchanged, and prints a JSON report.

usage: e2e_sdk_check.py BASE_URL MODEL
"""
import json
import sys

from openai import OpenAI

base_url, model = sys.argv[1:3]
client = OpenAI(base_url=base_url, api_key="unused-the-proxy-holds-the-key", max_retries=0, timeout=120)
report = {"models": [m.id for m in client.models.list()]}

chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "plain-question"}])
report["chat"] = chat.choices[0].message.content

text = ""
chunks = 0
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "streamed-question"}], stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        chunks += 1
        text += chunk.choices[0].delta.content
report["stream_chunks"] = chunks
report["stream_text"] = text
print(json.dumps(report))
