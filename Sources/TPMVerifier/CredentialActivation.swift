import AttestationCore
import COpenSSL
import Crypto
import Foundation

/// TPM2_MakeCredential done by the verifier (TCG TPM 2.0 Library, Part 1 §24): a secret that
/// only the TPM holding the endorsement key can recover, and only for a key with the given Name
/// loaded in that same TPM (TPM2_ActivateCredential).
///
/// Threat: an attestation key made in software and presented beside a genuine EK certificate.
/// The secret is wrapped to the EK (RSA-OAEP, label "IDENTITY"), and the TPM releases it only
/// when the object whose Name the blob was made for is loaded in it; a software key has no
/// such object, so the worker cannot answer with the secret.
public enum CredentialActivation {
    public struct Challenge: Sendable, Equatable {
        /// TPM2B_ID_OBJECT: the integrity HMAC and the encrypted credential.
        public let credentialBlob: Data
        /// TPM2B_ENCRYPTED_SECRET: the seed, encrypted to the EK.
        public let encryptedSecret: Data
    }

    public struct Failure: Error, CustomStringConvertible, Equatable {
        public let message: String
        public var description: String { message }
    }

    /// Makes a credential challenge carrying `secret` (at most 32 bytes) for the key named
    /// `objectName`, to the endorsement key `ek`. `seed` is for tests; leave it nil.
    public static func make(ek: TPMKeyIdentity, objectName: Data, secret: Data, seed fixedSeed: Data? = nil)
        throws(Failure) -> Challenge
    {
        if let problem = ek.endorsementKeyProblem { throw Failure(message: problem) }
        guard (1...32).contains(secret.count) else { throw Failure(message: "the secret must be 1-32 bytes") }
        let seed = fixedSeed ?? Data((0..<32).map { _ in UInt8.random(in: 0...255) })
        let encryptedSeed = try oaepEncrypt(seed, to: ek.area.key, label: Data("IDENTITY".utf8) + [0])
        let symmetricKey = kdfa(key: seed, label: "STORAGE", contextU: objectName, contextV: Data(), bits: 128)
        var plain = Data([UInt8(secret.count >> 8), UInt8(secret.count & 0xff)])
        plain.append(secret)
        let encIdentity = try aesCFB(plain, key: symmetricKey)
        let hmacKey = kdfa(key: seed, label: "INTEGRITY", contextU: Data(), contextV: Data(), bits: 256)
        let integrity = Data(
            HMAC<SHA256>.authenticationCode(for: encIdentity + objectName, using: SymmetricKey(data: hmacKey)))
        // TPM2B_ID_OBJECT: size ‖ TPM2B_DIGEST(integrity) ‖ encIdentity.
        var body = Data([UInt8(integrity.count >> 8), UInt8(integrity.count & 0xff)])
        body.append(integrity)
        body.append(encIdentity)
        var blob = Data([UInt8(body.count >> 8), UInt8(body.count & 0xff)])
        blob.append(body)
        return Challenge(credentialBlob: blob, encryptedSecret: encryptedSeed)
    }

    /// KDFa (Part 1 §11.4.10.2) with SHA-256: counter-mode HMAC over
    /// counter ‖ label ‖ 0 ‖ contextU ‖ contextV ‖ bits.
    static func kdfa(key: Data, label: String, contextU: Data, contextV: Data, bits: Int) -> Data {
        var out = Data()
        var counter: UInt32 = 1
        while out.count * 8 < bits {
            var input = withUnsafeBytes(of: counter.bigEndian) { Data($0) }
            input.append(Data(label.utf8))
            input.append(0)
            input.append(contextU)
            input.append(contextV)
            input.append(withUnsafeBytes(of: UInt32(bits).bigEndian) { Data($0) })
            out.append(Data(HMAC<SHA256>.authenticationCode(for: input, using: SymmetricKey(data: key))))
            counter += 1
        }
        return out.prefix(bits / 8)
    }

    static func oaepEncrypt(_ message: Data, to key: PublicKey, label: Data) throws(Failure) -> Data {
        defer { ERR_clear_error() }
        guard let ctx = EVP_PKEY_CTX_new(key.pkey, nil) else { throw Failure(message: "OpenSSL: no context") }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_encrypt_init(ctx) == 1, EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1,
            EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) == 1, EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) == 1
        else { throw Failure(message: "OpenSSL: cannot set up RSA-OAEP") }
        // The context takes ownership of the label buffer.
        guard let labelCopy = CRYPTO_malloc(label.count, #fileID, #line) else {
            throw Failure(message: "out of memory")
        }
        label.copyBytes(to: labelCopy.assumingMemoryBound(to: UInt8.self), count: label.count)
        guard EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, labelCopy, Int32(label.count)) == 1 else {
            CRYPTO_free(labelCopy, #fileID, #line)
            throw Failure(message: "OpenSSL: cannot set the OAEP label")
        }
        var length = 0
        let input = [UInt8](message)
        guard EVP_PKEY_encrypt(ctx, nil, &length, input, input.count) == 1 else {
            throw Failure(message: "OpenSSL: RSA-OAEP failed")
        }
        var output = [UInt8](repeating: 0, count: length)
        guard EVP_PKEY_encrypt(ctx, &output, &length, input, input.count) == 1 else {
            throw Failure(message: "OpenSSL: RSA-OAEP failed")
        }
        var secret = Data([UInt8(length >> 8), UInt8(length & 0xff)])
        secret.append(contentsOf: output.prefix(length))
        return secret
    }

    /// AES-128 in CFB mode with a zero IV (Part 1 §11.4.6.3: the key is used once).
    static func aesCFB(_ plain: Data, key: Data) throws(Failure) -> Data {
        guard let ctx = EVP_CIPHER_CTX_new() else { throw Failure(message: "OpenSSL: no cipher context") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        let iv = [UInt8](repeating: 0, count: 16)
        let keyBytes = [UInt8](key)
        var out = [UInt8](repeating: 0, count: plain.count + 16)
        var written: Int32 = 0
        var final: Int32 = 0
        let input = [UInt8](plain)
        guard EVP_EncryptInit_ex(ctx, EVP_aes_128_cfb128(), nil, keyBytes, iv) == 1,
            EVP_EncryptUpdate(ctx, &out, &written, input, Int32(input.count)) == 1
        else { throw Failure(message: "OpenSSL: AES-CFB failed") }
        let tail = out.withUnsafeMutableBufferPointer { buffer in
            EVP_EncryptFinal_ex(ctx, buffer.baseAddress! + Int(written), &final)
        }
        guard tail == 1 else { throw Failure(message: "OpenSSL: AES-CFB failed") }
        return Data(out.prefix(Int(written + final)))
    }
}
