import asyncio, decimal, email.message, email.parser, json

async def handle(event):
    msg = email.message.EmailMessage()
    msg["Subject"] = "order"
    msg.set_content(json.dumps(event))
    total = sum(decimal.Decimal(p) for p in event["prices"])
    return {"subject": msg["Subject"], "total": str(total)}

print(json.dumps(asyncio.run(handle({"prices": ["1.10", "2.20"]}))), flush=True)
