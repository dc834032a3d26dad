/// NVIDIA's roots, pinned (the files in `certs/nvidia/`; a test keeps the two equal).
///
/// Threat: a look-alike CA ("NVIDIA Device Identity CA" made by anyone). Only these exact keys
/// anchor a GPU's device chain and the reference manifests' signers.
public enum NVIDIARoots {
    /// NVIDIA Device Identity CA (P-384, self-signed, valid to 9999): the root of every GPU's
    /// attestation certificate chain.
    public static let deviceIdentityCA = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
    /// NVIDIA CoRIM signing Root CA (P-384, valid to 2053): the root of the reference integrity
    /// manifests' signers.
    public static let rimSigningRootCA = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"

    /// `certs/nvidia/nvidia-device-identity-ca.pem`.
    public static let deviceIdentityCAPEM = """
        -----BEGIN CERTIFICATE-----
        MIICCzCCAZCgAwIBAgIQLTZwscoQBBHB/sDoKgZbVDAKBggqhkjOPQQDAzA1MSIw
        IAYDVQQDDBlOVklESUEgRGV2aWNlIElkZW50aXR5IENBMQ8wDQYDVQQKDAZOVklE
        SUEwIBcNMjExMTA1MDAwMDAwWhgPOTk5OTEyMzEyMzU5NTlaMDUxIjAgBgNVBAMM
        GU5WSURJQSBEZXZpY2UgSWRlbnRpdHkgQ0ExDzANBgNVBAoMBk5WSURJQTB2MBAG
        ByqGSM49AgEGBSuBBAAiA2IABA5MFKM7+KViZljbQSlgfky/RRnEQScW9NDZF8SX
        gAW96r6u/Ve8ZggtcYpPi2BS4VFu6KfEIrhN6FcHG7WP05W+oM+hxj7nyA1r1jkB
        2Ry70YfThX3Ba1zOryOP+MJ9vaNjMGEwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
        Af8EBAMCAQYwHQYDVR0OBBYEFFeF/4PyY8xlfWi3Olv0jUrL+0lfMB8GA1UdIwQY
        MBaAFFeF/4PyY8xlfWi3Olv0jUrL+0lfMAoGCCqGSM49BAMDA2kAMGYCMQCPeFM3
        TASsKQVaT+8S0sO9u97PVGCpE9d/I42IT7k3UUOLSR/qvJynVOD1vQKVXf0CMQC+
        EY55WYoDBvs2wPAH1Gw4LbcwUN8QCff8bFmV4ZxjCRr4WXTLFHBKjbfneGSBWwA=
        -----END CERTIFICATE-----
        """

    /// `certs/nvidia/nvidia-corim-signing-root-ca.pem`.
    public static let rimSigningRootCAPEM = """
        -----BEGIN CERTIFICATE-----
        MIICKTCCAbCgAwIBAgIQRdrjoA5QN73fh1N17LXicDAKBggqhkjOPQQDAzBFMQsw
        CQYDVQQGEwJVUzEPMA0GA1UECgwGTlZJRElBMSUwIwYDVQQDDBxOVklESUEgQ29S
        SU0gc2lnbmluZyBSb290IENBMCAXDTIzMDMxNjE1MzczNFoYDzIwNTMwMzA4MTUz
        NzM0WjBFMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGTlZJRElBMSUwIwYDVQQDDBxO
        VklESUEgQ29SSU0gc2lnbmluZyBSb290IENBMHYwEAYHKoZIzj0CAQYFK4EEACID
        YgAEuECyi9vNM+Iw2lfUzyBldHAwaC1HF7TCgp12QcEyUTm3Tagxwr48d55+K2VI
        lWYIDk7NlAIQdcV/Ff7euGLI+Qauj93HsSI4WX298PpW54RTgz9tC+Q684caR/BX
        WEeZo2MwYTAdBgNVHQ4EFgQUpaXrOPK4ZDAk08DBskn594zeZjAwHwYDVR0jBBgw
        FoAUpaXrOPK4ZDAk08DBskn594zeZjAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
        Af8EBAMCAQYwCgYIKoZIzj0EAwMDZwAwZAIwHGDyscDP6ihHqRvZlI3eqZ4YkvjE
        1duaN84tAHRVgxVMvNrp5Tnom3idHYGW/dskAjATvjIx6VzHm/4e2GiZAyZEIUBD
        OKPzp5ei/A0iUZpdvngenDwV8Qa/wGdiTmJ7Bp4=
        -----END CERTIFICATE-----
        """
}
