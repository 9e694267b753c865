// A localhost MCP server with the TypeScript SDK's DNS-rebinding protection on, set up
// as the conformance suite's reference everything-server sets it up:
// `createMcpExpressApp()` bound to 127.0.0.1, which validates `Host` against
// localhost / 127.0.0.1 / [::1] (403 otherwise), and a stateless Streamable HTTP
// transport at /mcp. Used by suite/tests/interop.rs to show that the backend's own
// protection still works behind the router (the router forwards the client's Host).
//
//   node rebinding_server.mjs [port]   -> prints "listening on port <port>"
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';

const port = Number(process.argv[2] ?? 0);
const app = createMcpExpressApp();
app.post('/mcp', async (req, res) => {
  const server = new McpServer({ name: 'rebinding-reference', version: '1.0.0' });
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  await server.connect(transport);
  await transport.handleRequest(req, res, req.body);
});
const srv = app.listen(port, '127.0.0.1', () => {
  console.log(`listening on port ${srv.address().port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
