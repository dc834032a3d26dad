"""Drives the gateway with the official openai SDK, unchanged, and prints a JSON report.

usage: openai_sdk_check.py BASE_URL API_KEY MODEL
"""
import json
import sys

import openai
from openai import OpenAI

base_url, api_key, model = sys.argv[1:4]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
report = {"models": [m.id for m in client.models.list()]}

chat = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0
)
report["chat"] = chat.choices[0].message.content

chunks = 0
text = ""
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Count to five."}], max_tokens=12, temperature=0, stream=True
):
    if chunk.choices and chunk.choices[0].delta.content:
        chunks += 1
        text += chunk.choices[0].delta.content
report["stream_chunks"] = chunks
report["stream_text"] = text

completion = client.completions.create(model=model, prompt="The sky is", max_tokens=8, temperature=0)
report["completion"] = completion.choices[0].text

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    report["unknown_model_error"] = None
except openai.APIStatusError as error:
    report["unknown_model_error"] = type(error).__name__

try:
    OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    report["bad_key_error"] = None
except openai.APIStatusError as error:
    report["bad_key_error"] = type(error).__name__

print(json.dumps(report))
