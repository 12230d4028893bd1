/// How deliveries log in to an HTTP endpoint besides the signature (`auth`:
/// a bearer token, basic auth or OAuth2 client credentials) and an https
/// endpoint's TLS settings (`tls`: a client certificate, its own CA). Every
/// secret is sealed at rest and never shown again: the form asks for it
/// again when the settings change.

export type AuthKind = 'none' | 'bearer' | 'basic' | 'oauth2';

/// `auth` as the API shows it (never the secret).
export type AuthView = {
  type: 'bearer' | 'basic' | 'oauth2';
  username?: string;
  token_url?: string;
  client_id?: string;
  scope?: string;
  secret_set: boolean;
};

/// `tls` as the API shows it (never the key).
export type TlsView = { cert_pem?: string | null; key_set: boolean; ca_pem?: string | null };

/// The settings as the form edits them. `touched`: changed since loaded, so
/// a save sends them (and needs the secret again).
export type EndpointForm = {
  kind: AuthKind;
  username: string;
  secret: string;
  tokenUrl: string;
  clientId: string;
  scope: string;
  cert: string;
  key: string;
  ca: string;
  secretSet: boolean;
  keySet: boolean;
  touched: boolean;
};

export const isHttps = (url: string) => url.trim().toLowerCase().startsWith('https://');

/// The form's state for stored settings.
export function endpointForm(auth?: AuthView | null, tls?: TlsView | null): EndpointForm {
  return {
    kind: auth?.type ?? 'none',
    username: auth?.username ?? '',
    secret: '',
    tokenUrl: auth?.token_url ?? '',
    clientId: auth?.client_id ?? '',
    scope: auth?.scope ?? '',
    cert: tls?.cert_pem ?? '',
    key: '',
    ca: tls?.ca_pem ?? '',
    secretSet: auth?.secret_set ?? false,
    keySet: tls?.key_set ?? false,
    touched: false,
  };
}

const pem = (s: string) => (s.trim() ? s.trim() + '\n' : undefined);

/// The `auth` and `tls` fields of a create or PATCH body (`null`: none).
export function endpointBody(f: EndpointForm, url: string): { auth: object | null; tls: object | null } {
  let auth: object | null = null;
  if (f.kind === 'bearer') auth = { type: 'bearer', token: f.secret };
  if (f.kind === 'basic') auth = { type: 'basic', username: f.username.trim(), password: f.secret };
  if (f.kind === 'oauth2') {
    auth = { type: 'oauth2', token_url: f.tokenUrl.trim(), client_id: f.clientId.trim(), client_secret: f.secret };
    if (f.scope.trim()) (auth as any).scope = f.scope.trim();
  }
  let tls: object | null = null;
  if (isHttps(url) && (f.cert.trim() || f.ca.trim())) {
    tls = { cert_pem: pem(f.cert), key_pem: f.cert.trim() ? f.key : undefined, ca_pem: pem(f.ca) };
  }
  return { auth, tls };
}

export function EndpointFields({ id, url, value, onChange }: { id: string; url: string; value: EndpointForm; onChange: (f: EndpointForm) => void }) {
  const set = (change: Partial<EndpointForm>) => onChange({ ...value, ...change, touched: true });
  const input = (field: keyof EndpointForm) => (e: Event) => set({ [field]: (e.target as HTMLInputElement).value } as Partial<EndpointForm>);
  const stored = (isSet: boolean) => (isSet && !value.touched ? 'stored; type it again to change these settings' : '');
  const secretLabel = { none: '', bearer: 'Token', basic: 'Password', oauth2: 'Client secret' }[value.kind];
  return (
    <fieldset class="grid routing" data-testid={`endpoint-${id}`}>
      <legend>Endpoint authentication</legend>
      <label for={`auth-kind-${id}`}>Authorization</label>
      <select id={`auth-kind-${id}`} value={value.kind} onChange={(e) => set({ kind: (e.target as HTMLSelectElement).value as AuthKind })}>
        <option value="none">none: the signature only</option>
        <option value="bearer">bearer token</option>
        <option value="basic">basic auth</option>
        <option value="oauth2">OAuth2 client credentials</option>
      </select>
      {value.kind === 'basic' && (
        <>
          <label for={`auth-username-${id}`}>Username</label>
          <input id={`auth-username-${id}`} required autocomplete="off" value={value.username} onInput={input('username')} />
        </>
      )}
      {value.kind === 'oauth2' && (
        <>
          <label for={`auth-token-url-${id}`}>Token URL</label>
          <input id={`auth-token-url-${id}`} type="url" required value={value.tokenUrl} onInput={input('tokenUrl')} />
          <label for={`auth-client-id-${id}`}>Client id</label>
          <input id={`auth-client-id-${id}`} required autocomplete="off" value={value.clientId} onInput={input('clientId')} />
          <label for={`auth-scope-${id}`}>Scope (optional)</label>
          <input id={`auth-scope-${id}`} value={value.scope} onInput={input('scope')} />
        </>
      )}
      {value.kind !== 'none' && (
        <>
          <label for={`auth-secret-${id}`}>{secretLabel}</label>
          <input
            id={`auth-secret-${id}`}
            type="password"
            autocomplete="new-password"
            required={value.touched || !value.secretSet}
            placeholder={stored(value.secretSet)}
            value={value.secret}
            onInput={input('secret')}
          />
          <p class="hint">Sealed at rest; Herald never shows it again.</p>
        </>
      )}
      {isHttps(url) && (
        <>
          <label for={`tls-cert-${id}`}>Client certificate for mutual TLS (PEM; optional)</label>
          <textarea id={`tls-cert-${id}`} rows={3} spellcheck={false} placeholder="-----BEGIN CERTIFICATE-----" value={value.cert} onInput={input('cert')} />
          {value.cert.trim() && (
            <>
              <label for={`tls-key-${id}`}>Its private key (PEM)</label>
              <textarea
                id={`tls-key-${id}`}
                rows={3}
                spellcheck={false}
                required={value.touched || !value.keySet}
                placeholder={stored(value.keySet) || '-----BEGIN PRIVATE KEY-----'}
                value={value.key}
                onInput={input('key')}
              />
            </>
          )}
          <label for={`tls-ca-${id}`}>CA certificates for the endpoint (PEM; empty: the public roots)</label>
          <textarea id={`tls-ca-${id}`} rows={3} spellcheck={false} placeholder="-----BEGIN CERTIFICATE-----" value={value.ca} onInput={input('ca')} />
        </>
      )}
    </fieldset>
  );
}
