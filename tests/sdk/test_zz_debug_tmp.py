import json, anthropic, openai
def test_dump(aclient, oclient):
    for model in ["gpt-midfail", "llama-middrop", "claude-middrop"]:
        with aclient.messages.with_streaming_response.create(model=model, max_tokens=20, messages=[{"role":"user","content":"x"}], stream=True) as r:
            print("\n== anth", model, r.status_code); print(r.read().decode()[-400:])
    for model in ["claude-midfail", "llama-middrop"]:
        with oclient.chat.completions.with_streaming_response.create(model=model, messages=[{"role":"user","content":"x"}], stream=True) as r:
            print("\n== chat", model, r.status_code); print(r.read().decode()[-400:])
    for model in ["claude-midfail", "gpt-middrop"]:
        with oclient.responses.with_streaming_response.create(model=model, input="x", stream=True) as r:
            print("\n== resp", model, r.status_code); print(r.read().decode()[-700:])
    for model in ["gpt-x", "mock-1"]:
        try: aclient.messages.count_tokens(model=model, messages=[{"role":"user","content":"x"}])
        except anthropic.APIStatusError as e: print("\n== count", model, e.status_code, e.response.text)
    try: oclient.responses.create(model="gpt-x", input="x", previous_response_id="resp_1")
    except openai.APIStatusError as e: print("\n== prev", e.status_code, e.response.text)
    for model in ["gpt-err-429", "llama-err-404"]:
        try: aclient.messages.create(model=model, max_tokens=20, messages=[{"role":"user","content":"x"}])
        except anthropic.APIStatusError as e: print("\n== err", model, e.status_code, e.response.text, dict(e.response.headers))
