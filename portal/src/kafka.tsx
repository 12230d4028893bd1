/// The connection settings of a Kafka destination (a subscription whose URL
/// is `kafka://host:port/topic`): TLS with the brokers' CA, SASL with a
/// password that is sealed at rest and never shown again.

export type Protocol = 'plaintext' | 'ssl' | 'sasl_plaintext' | 'sasl_ssl';
export type Mechanism = 'PLAIN' | 'SCRAM-SHA-256' | 'SCRAM-SHA-512';

/// The settings as the API shows them (never the password).
export type KafkaView = {
  security_protocol: Protocol;
  sasl_mechanism?: Mechanism | null;
  username?: string | null;
  password_set: boolean;
  ca_pem?: string | null;
};

/// The settings as the form edits them. `touched`: changed since loaded, so
/// an edit sends them (and, for SASL, needs the password again).
export type KafkaForm = {
  protocol: Protocol;
  mechanism: Mechanism;
  username: string;
  password: string;
  ca: string;
  passwordSet: boolean;
  touched: boolean;
};

export const isKafka = (url: string) => url.trim().toLowerCase().startsWith('kafka://');
const sasl = (p: Protocol) => p === 'sasl_plaintext' || p === 'sasl_ssl';
const tls = (p: Protocol) => p === 'ssl' || p === 'sasl_ssl';

/// The form's state for stored settings (none: plaintext).
export function kafkaForm(v?: KafkaView | null): KafkaForm {
  return {
    protocol: v?.security_protocol ?? 'plaintext',
    mechanism: v?.sasl_mechanism ?? 'PLAIN',
    username: v?.username ?? '',
    password: '',
    ca: v?.ca_pem ?? '',
    passwordSet: v?.password_set ?? false,
    touched: false,
  };
}

/// The `kafka` object of a create or PATCH body (`null`: none, plaintext).
export function kafkaBody(f: KafkaForm): Record<string, string> | null {
  if (f.protocol === 'plaintext') return null;
  const body: Record<string, string> = { security_protocol: f.protocol };
  if (sasl(f.protocol)) {
    body.sasl_mechanism = f.mechanism;
    body.username = f.username.trim();
    body.password = f.password;
  }
  if (tls(f.protocol) && f.ca.trim()) body.ca_pem = f.ca.trim() + '\n';
  return body;
}

export function KafkaFields({ id, value, onChange }: { id: string; value: KafkaForm; onChange: (f: KafkaForm) => void }) {
  const set = (change: Partial<KafkaForm>) => onChange({ ...value, ...change, touched: true });
  const needPassword = sasl(value.protocol) && (value.touched || !value.passwordSet);
  return (
    <fieldset class="grid routing" data-testid={`kafka-${id}`}>
      <legend>Kafka connection</legend>
      <label for={`kafka-protocol-${id}`}>Security protocol</label>
      <select id={`kafka-protocol-${id}`} value={value.protocol} onChange={(e) => set({ protocol: (e.target as HTMLSelectElement).value as Protocol })}>
        <option value="plaintext">plaintext: no TLS, no authentication</option>
        <option value="ssl">ssl: TLS</option>
        <option value="sasl_plaintext">sasl_plaintext: SASL without TLS</option>
        <option value="sasl_ssl">sasl_ssl: SASL over TLS</option>
      </select>
      {sasl(value.protocol) && (
        <>
          <label for={`kafka-mechanism-${id}`}>SASL mechanism</label>
          <select id={`kafka-mechanism-${id}`} value={value.mechanism} onChange={(e) => set({ mechanism: (e.target as HTMLSelectElement).value as Mechanism })}>
            <option value="PLAIN">PLAIN</option>
            <option value="SCRAM-SHA-256">SCRAM-SHA-256</option>
            <option value="SCRAM-SHA-512">SCRAM-SHA-512</option>
          </select>
          <label for={`kafka-username-${id}`}>SASL username</label>
          <input id={`kafka-username-${id}`} required autocomplete="off" value={value.username} onInput={(e) => set({ username: (e.target as HTMLInputElement).value })} />
          <label for={`kafka-password-${id}`}>SASL password</label>
          <input
            id={`kafka-password-${id}`}
            type="password"
            autocomplete="new-password"
            required={needPassword}
            placeholder={value.passwordSet && !value.touched ? 'stored; type it again to change these settings' : ''}
            value={value.password}
            onInput={(e) => set({ password: (e.target as HTMLInputElement).value })}
          />
          <p class="hint">Sealed at rest; Herald never shows it again.</p>
        </>
      )}
      {tls(value.protocol) && (
        <>
          <label for={`kafka-ca-${id}`}>CA certificates for the brokers (PEM; empty: the system's)</label>
          <textarea
            id={`kafka-ca-${id}`}
            rows={3}
            spellcheck={false}
            placeholder="-----BEGIN CERTIFICATE-----"
            value={value.ca}
            onInput={(e) => set({ ca: (e.target as HTMLTextAreaElement).value })}
          />
        </>
      )}
    </fieldset>
  );
}
