# Forward 127.0.0.1:LISTEN to 127.0.0.1:TARGET, delaying every reply by DELAY
# seconds: the slow L2 node of tests/integration/30-l2-memcached.sh and
# bench/cache.sh.  Replies keep their order.
import asyncio, sys
LISTEN, TARGET, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

async def pump(reader, writer, delay):
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            if delay:
                loop.call_later(delay, writer.write, data)
            else:
                writer.write(data)
        if delay:
            await asyncio.sleep(delay)
    except Exception:
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass

async def handle(cr, cw):
    try:
        sr, sw = await asyncio.open_connection("127.0.0.1", TARGET)
    except Exception:
        cw.close()
        return
    await asyncio.gather(pump(cr, sw, 0), pump(sr, cw, DELAY))

async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    async with srv:
        await srv.serve_forever()

asyncio.run(main())
