"""A TLS front for Temporal's dev server (which speaks plain gRPC only), for
the worker's mTLS test: terminates TLS on 127.0.0.1:PORT with ALPN h2,
requires a client certificate signed by CA, and relays to 127.0.0.1:TARGET.

usage: python tls_front.py PORT TARGET CERT KEY CA
"""

import asyncio
import ssl
import sys


async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        w.close()


async def main():
    port, target, cert, key, ca = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])

    async def serve(r, w):
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            w.close()
            return
        await asyncio.gather(pipe(r, uw), pipe(ur, w))

    server = await asyncio.start_server(serve, "127.0.0.1", port, ssl=ctx)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
