//! The client-side encryption of files PUT to an internal stage, as
//! Snowflake's connectors do it: AES-CBC with a random file key, the key
//! wrapped with AES-ECB under the stage's master key, described by a
//! material descriptor; and the SHA-256 digest Snowflake checks.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use quarry_core::{Error, Result};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The key material of an internal stage (`encryptionMaterial`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Material {
    /// Base64 of a 128- or 256-bit AES key.
    pub query_stage_master_key: String,
    pub query_id: String,
    pub smk_id: Value,
}

/// What Snowflake needs to decrypt an uploaded file.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Envelope {
    /// Base64 of the file key wrapped with the master key.
    pub key: String,
    /// Base64 of the CBC initialisation vector.
    pub iv: String,
    /// `{"queryId":…,"smkId":…,"keySize":…}`.
    pub matdesc: String,
    pub key_bits: usize,
}

impl Envelope {
    /// The JSON GCS and Azure keep the envelope in.
    pub(super) fn encryption_data(&self) -> String {
        let algorithm = format!("AES_CBC_{}", self.key_bits);
        json!({
            "EncryptionMode": "FullBlob",
            "WrappedContentKey": {
                "KeyId": "symmKey1",
                "EncryptedKey": self.key,
                "Algorithm": algorithm,
            },
            "EncryptionAgent": {"Protocol": "1.0", "EncryptionAlgorithm": algorithm},
            "ContentEncryptionIV": self.iv,
            "KeyWrappingMetadata": {"EncryptionLibrary": "Java 5.3.0"},
        })
        .to_string()
    }
}

/// Encrypts `data` for a stage: a fresh random key and IV per file, the
/// content in AES-CBC with PKCS#7 padding, the key in AES-ECB (PKCS#7)
/// under the master key — the scheme Snowflake's own clients use.
pub(super) fn encrypt(material: &Material, data: &[u8]) -> Result<(Vec<u8>, Envelope)> {
    use aes::cipher::block_padding::Pkcs7;
    use aes::cipher::{BlockModeEncrypt, KeyInit, KeyIvInit};
    use rand::RngCore;

    let master = B64
        .decode(material.query_stage_master_key.trim())
        .map_err(|e| {
            Error::internal(format!(
                "snowflake sent a master key that is not base64: {e}"
            ))
        })?;
    let mut file_key = vec![0u8; master.len()];
    let mut iv = [0u8; 16];
    rand::rng().fill_bytes(&mut file_key);
    rand::rng().fill_bytes(&mut iv);
    let bad_key = || {
        Error::internal(format!(
            "snowflake sent a {}-byte master key (16, 24 or 32 expected)",
            master.len()
        ))
    };
    macro_rules! with_aes {
        ($aes:ty) => {{
            let body = cbc::Encryptor::<$aes>::new_from_slices(&file_key, &iv)
                .map_err(|_| bad_key())?
                .encrypt_padded_vec::<Pkcs7>(data);
            let wrapped = ecb::Encryptor::<$aes>::new_from_slice(&master)
                .map_err(|_| bad_key())?
                .encrypt_padded_vec::<Pkcs7>(&file_key);
            (body, wrapped)
        }};
    }
    let (body, wrapped) = match master.len() {
        16 => with_aes!(aes::Aes128),
        24 => with_aes!(aes::Aes192),
        32 => with_aes!(aes::Aes256),
        _ => return Err(bad_key()),
    };
    let smk = match &material.smk_id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let key_bits = master.len() * 8;
    Ok((
        body,
        Envelope {
            key: B64.encode(wrapped),
            iv: B64.encode(iv),
            matdesc: json!({
                "queryId": material.query_id,
                "smkId": smk,
                "keySize": key_bits.to_string(),
            })
            .to_string(),
            key_bits,
        },
    ))
}

/// Base64 of the SHA-256 of a file's plain content (`sfc-digest`).
pub(super) fn digest(data: &[u8]) -> String {
    B64.encode(Sha256::digest(data))
}

/// Decrypts what `encrypt` produced with AES-128 material, for tests.
#[cfg(test)]
pub(super) fn test_decrypt(material: &Material, envelope: &Envelope, body: &[u8]) -> Vec<u8> {
    use aes::cipher::block_padding::Pkcs7;
    use aes::cipher::{BlockModeDecrypt, KeyInit, KeyIvInit};
    let master = B64.decode(&material.query_stage_master_key).unwrap();
    let wrapped = B64.decode(&envelope.key).unwrap();
    let iv = B64.decode(&envelope.iv).unwrap();
    assert_eq!(master.len(), 16, "the test material is AES-128");
    let key = ecb::Decryptor::<aes::Aes128>::new_from_slice(&master)
        .unwrap()
        .decrypt_padded_vec::<Pkcs7>(&wrapped)
        .unwrap();
    cbc::Decryptor::<aes::Aes128>::new_from_slices(&key, &iv)
        .unwrap()
        .decrypt_padded_vec::<Pkcs7>(body)
        .unwrap()
}

/// Key material of the given length, for tests.
#[cfg(test)]
pub(super) fn test_material(key_len: usize) -> Material {
    Material {
        query_stage_master_key: B64.encode((0..key_len as u8).collect::<Vec<_>>()),
        query_id: "01b2-query".into(),
        smk_id: json!(4711),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_round_trips_and_describes_itself() {
        let m = test_material(16);
        for len in [0usize, 1, 15, 16, 17, 100_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let (body, env) = encrypt(&m, &data).unwrap();
            // PKCS#7 always pads: a whole block is added to aligned input.
            assert_eq!(body.len(), (len / 16 + 1) * 16);
            if len > 0 {
                assert_ne!(&body[..len.min(16)], &data[..len.min(16)]);
            }
            assert_eq!(test_decrypt(&m, &env, &body), data);
            // A fresh key and IV per file.
            let (again, env2) = encrypt(&m, &data).unwrap();
            assert_ne!(env.key, env2.key);
            assert_ne!(body, again);
            // 16-byte file key + a padding block, wrapped.
            assert_eq!(B64.decode(&env.key).unwrap().len(), 32);
            assert_eq!(
                env.matdesc,
                r#"{"keySize":"128","queryId":"01b2-query","smkId":"4711"}"#
            );
        }
        for bits in [24, 32] {
            let (_, env) = encrypt(&test_material(bits), b"x").unwrap();
            assert_eq!(env.key_bits, bits * 8);
        }
        let err = encrypt(&test_material(8), b"x").unwrap_err().to_string();
        assert!(err.contains("8-byte master key"), "{err}");
    }

    /// Snowflake's own Python connector (installed with the fakesnow
    /// stand-in) decrypts what `encrypt` produced, with both key sizes.
    #[test]
    #[ignore = "needs the Snowflake connector of the fakesnow stand-in: scripts/test.sh runs it"]
    fn snowflakes_connector_decrypts_our_files() {
        let python = quarry_testkit::standin("QUARRY_TEST_SNOWFLAKE_PYTHON");
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_003u32).map(|i| (i % 253) as u8).collect();
        let script = r#"
import json, sys
from snowflake.connector.constants import EncryptionMetadata
from snowflake.connector.encryption_util import SnowflakeEncryptionUtil
from snowflake.connector.storage_client import SnowflakeFileEncryptionMaterial
a = json.loads(sys.argv[1])
material = SnowflakeFileEncryptionMaterial(a["master"], "01b2-query", 4711)
meta = EncryptionMetadata(a["key"], a["iv"], a["matdesc"])
out = SnowflakeEncryptionUtil.decrypt_file(meta, material, a["path"], tmp_dir=a["dir"])
print(out)
"#;
        for key_len in [16, 32] {
            let m = test_material(key_len);
            let (body, env) = encrypt(&m, &data).unwrap();
            let path = dir.path().join(format!("f{key_len}.parquet"));
            std::fs::write(&path, &body).unwrap();
            let args = json!({
                "master": m.query_stage_master_key,
                "key": env.key,
                "iv": env.iv,
                "matdesc": env.matdesc,
                "path": path,
                "dir": dir.path(),
            });
            let out = std::process::Command::new(&python)
                .args(["-c", script, &args.to_string()])
                .output()
                .expect("the stand-in's Python runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let plain = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                std::fs::read(plain.trim()).unwrap(),
                data,
                "key of {key_len} bytes"
            );
        }
    }
}
