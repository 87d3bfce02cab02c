// A real OpenID provider (panva/oidc-provider) for opp-auth-oidc's tests.
// Configured by environment: PORT, KEYS (a private JWKS, the first key signs), CLIENTS (a JSON list of
// client metadata), ACCOUNTS (a JSON object: account id -> claims), ACCESS_TOKEN_TTL (seconds, 3600 by
// default). The dev interactions log in any account id with any password, then ask for consent. Every
// code grant of a client allowed the refresh_token grant gets a refresh token, rotated at each use (a
// used one replayed revokes the grant). On stdin's end, or SIGTERM, it exits.
import Provider from "oidc-provider";

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const accounts = JSON.parse(process.env.ACCOUNTS || "{}");

const provider = new Provider(issuer, {
  clients: JSON.parse(process.env.CLIENTS),
  jwks: JSON.parse(process.env.KEYS),
  cookies: { keys: ["opp-auth-test-cookie-key"] },
  pkce: { required: () => true },
  claims: {
    openid: ["sub"],
    profile: ["name", "preferred_username"],
    email: ["email"],
    groups: ["groups"],
  },
  scopes: ["openid", "offline_access", "profile", "email", "groups"],
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed("refresh_token"),
  rotateRefreshToken: () => true,
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  ttl: { IdToken: 3600, AccessToken: Number(process.env.ACCESS_TOKEN_TTL || 3600), AuthorizationCode: 60, Session: 3600, Interaction: 600, Grant: 3600 },
  async findAccount(ctx, id) {
    const claims = accounts[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
  // Its SSRF guard refuses loopback addresses, where the tests' opp-auth listens for back-channel logouts.
  fetch(url, options) {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  renderError(ctx, out) {
    ctx.type = "text/plain";
    ctx.body = `error: ${out.error}: ${out.error_description || ""}`;
  },
});
// Test-only: PUT /test/accounts/<id> with JSON claims changes an account while the provider runs.
provider.use(async (ctx, next) => {
  const match = ctx.method === "PUT" && /^\/test\/accounts\/([^/]+)$/.exec(ctx.path);
  if (!match) { await next(); return; }
  let body = "";
  for await (const chunk of ctx.req) body += chunk;
  accounts[decodeURIComponent(match[1])] = JSON.parse(body);
  ctx.status = 204;
});
provider.on("server_error", (ctx, err) => console.error("server_error", err));
provider.on("backchannel.success", (ctx, client, accountId, sid) => console.log(`backchannel.success ${accountId} ${sid}`));
provider.on("backchannel.error", (ctx, err, client, accountId, sid) => console.log(`backchannel.error ${accountId} ${sid} ${err} ${err.cause}`));

const server = provider.listen(port, "127.0.0.1", () => console.log(`listening ${issuer}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
